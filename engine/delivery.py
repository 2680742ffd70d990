"""Whether a delivered file task should process its file: a plain function of the job store.

A file's message can arrive more than once: a killed pool process hands it back
(``task_reject_on_worker_lost``), a worker that died as a whole has its messages
restored after the visibility timeout, a Redis error retries the task. Each start is
counted in the job record first (``JobStore.begin_file``, one Lua script), and then:

* the job is finished, or its record is gone: do nothing (``ignore``);
* an earlier delivery recorded the file: do not process it again (``recorded``);
* the worker died ``max_deliveries`` times on this file: record it as skipped
  ``worker_lost`` instead of processing it a further time (``give_up``);
* otherwise process it (``process``); ``deaths`` says how many deliveries died before.

A start that ended inside the task itself (a retry after a Redis error) is not a death:
``retries`` (the task's own retry count) is subtracted from the starts.
No Celery here: ``workers.tasks.infer_file`` calls it and acts on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.jobstore import JobStore

Action = Literal["ignore", "recorded", "give_up", "process"]


@dataclass(frozen=True)
class Delivery:
    action: Action
    #: Deliveries of this file whose worker process died before recording it.
    deaths: int = 0
    #: ``recorded``: the earlier record; ``give_up``: the ``worker_lost`` record now stored.
    record: dict[str, Any] | None = None
    #: ``ignore``: why (``finished`` or ``gone``).
    job_state: str | None = None


def worker_lost_record(path: str, deaths: int) -> dict[str, Any]:
    return {
        "path": path,
        "status": "skipped",
        "reason": "worker_lost",
        "detail": f"the worker process died {deaths} times while processing this file; given up",
    }


def decide_delivery(
    store: JobStore, job_id: str, index: int, *, path: str, retries: int, max_deliveries: int, worker: str | None = None
) -> Delivery:
    """Count this delivery of file ``index`` and say what to do with it.

    On ``give_up`` the ``worker_lost`` record is already stored in the job.
    """
    begun = store.begin_file(job_id, index)
    if begun.state in ("gone", "finished"):
        return Delivery("ignore", job_state=begun.state)
    if begun.state == "recorded" and begun.record is not None:
        return Delivery("recorded", record=begun.record)
    deaths = max(0, begun.starts - 1 - retries)
    if deaths >= max_deliveries:
        record = worker_lost_record(path, deaths)
        record.update(index=index, worker=worker)
        store.record_file(job_id, index, record)
        return Delivery("give_up", deaths=deaths, record=record)
    return Delivery("process", deaths=deaths)
