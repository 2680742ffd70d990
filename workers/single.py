"""A single inference's answer, and waking the API when it is there (Redis, no pub/sub).

The answer (findings, patient metadata, base64 images) does not travel as the task's
Celery result: results are what Flower shows and serves (``/api/task/result``) and
what stays in Redis for ``result_expires``. The worker stores it under
``cxr:single:<task_id>:outcome`` (``store_outcome``, expiring after ``OUTCOME_TTL_S``)
and the task returns only its id and status; the API takes it once (``take_outcome``:
read and deleted together), so the patient's data stays in Redis only from the end of
the task until the API has read it.

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

import json
from typing import Any

DONE_KEY = "cxr:single:{task_id}:done"
#: How long an unread marker lives (longer than any single-inference wait).
DONE_TTL_S = 900
OUTCOME_KEY = "cxr:single:{task_id}:outcome"
#: How long an answer nobody took lives: the API reads it within a second of the task's
#: end, and a request it gave up on (``CXR_SINGLE_WAIT_S``) has no one to read it.
OUTCOME_TTL_S = 300


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


def store_outcome(client: Any, task_id: str, outcome: dict[str, Any]) -> None:
    """Worker side: the answer of ``task_id``, for the API to take once."""
    client.set(OUTCOME_KEY.format(task_id=task_id), json.dumps(outcome, ensure_ascii=False), ex=OUTCOME_TTL_S)


def take_outcome(client: Any, task_id: str) -> dict[str, Any] | None:
    """API side: the answer, deleted as it is read; None if there is none (expired, never written).

    A plain pipeline, not MULTI/EXEC: a full Redis refuses every command of a transaction,
    and GET and DEL are what it still accepts (the answer is the API's alone to read).
    """
    pipe = client.pipeline(transaction=False)
    pipe.get(OUTCOME_KEY.format(task_id=task_id))
    pipe.delete(OUTCOME_KEY.format(task_id=task_id))
    raw, _ = pipe.execute()
    return dict(json.loads(raw)) if raw else None
