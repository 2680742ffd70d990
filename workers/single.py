"""Waking the API when a single-inference task has ended (a Redis list, no pub/sub).

``POST /single_inference`` waits for one task. Polling its stored result costs up to one
polling interval of latency per request; subscribing to the result channel is what
``workers.backend`` exists to avoid. Instead, once the task's outcome is stored (Celery's
``task_postrun``, which runs after the result is written, success or failure), the
worker pushes a marker onto ``cxr:single:<task_id>:done`` and the API waits on it with
``BLPOP``: it wakes within a millisecond of the result being readable, and holds no
per-task state in Redis beyond one short-lived key. The key expires by itself, so a
marker nobody waits for (the API gave up) does not linger. No Celery, no TensorFlow here.
"""

from __future__ import annotations

from typing import Any

DONE_KEY = "cxr:single:{task_id}:done"
#: How long an unread marker lives (longer than any single-inference wait).
DONE_TTL_S = 900


def done_key(task_id: str) -> str:
    return DONE_KEY.format(task_id=task_id)


def notify_done(client: Any, task_id: str) -> None:
    """Worker side: say that ``task_id``'s outcome is stored."""
    key = done_key(task_id)
    pipe = client.pipeline()
    pipe.lpush(key, "1")
    pipe.expire(key, DONE_TTL_S)
    pipe.execute()


def wait_done(client: Any, task_id: str, timeout_s: float) -> bool:
    """API side: block up to ``timeout_s`` (at least 1 ms) for the marker; True if it came."""
    return client.blpop([done_key(task_id)], timeout=max(timeout_s, 0.001)) is not None
