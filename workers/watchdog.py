"""The stalled-job watchdog: a job whose messages were lost must not read "running" forever.

A bulk job normally ends through its chord callback. If Redis loses messages (restarted
without its data, a queue deleted by hand, a chord only partly sent), the callback never
comes and the job would stay ``running``. A job that merely waits behind other jobs must
not be mistaken for one, so *stalled* means both:

1. no file of the job was recorded for ``CXR_STALL_GRACE_S`` (since the job was created
   or its last file record), and
2. none of its messages can still run: no task id of the job (``<job_id>-<i>`` or
   ``<job_id>-finalize``) is in the ``inference`` or ``celery`` queue, nor among the
   messages workers hold unacknowledged (kombu's ``unacked`` hash: running, reserved,
   or waiting for a retry countdown).

Because a message is briefly in neither place while a worker takes it (kombu's BRPOP,
then the ``unacked`` write), a job is finalised only when two sweeps at least
``CXR_WATCHDOG_INTERVAL_S`` apart both found it stalled. It is then finalised like the
callback does, with every unrecorded file skipped as ``lost`` and the job ``failed``.

Who runs it: a daemon thread in every worker's main process (``workers.tasks._start_watchdog`` on
``worker_ready``), sweeping every ``CXR_WATCHDOG_INTERVAL_S``; a Redis lock lets one
sweep run at a time across all worker hosts. With no worker running nothing can be
lost either (the messages wait in Redis), and after Redis lost everything the job
record is gone too, so ``GET /jobs/<id>`` answers 404. The queue scan reads every
queued message, so it runs only when some job already meets condition 1.
Nothing here imports TensorFlow; Celery only through the outcome lookup the caller passes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from engine.jobstore import FINISHED, JobStore
from workers.canvas import job_id_of_task
from workers.finalize import TaskOutcome, finalize_job

log = logging.getLogger(__name__)

#: kombu's Redis transport: the hash of delivered, unacknowledged messages and the
#: separator of its priority sub-queues (``<queue>\x06\x16<priority>``).
UNACKED_KEY = "unacked"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
LOCK_KEY = "cxr:watchdog:lock"
_SCAN_CHUNK = 500


def _task_id(payload: Any) -> str | None:
    headers = payload.get("headers") if isinstance(payload, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) else None


def jobs_with_messages(client: Any, queues: Iterable[str]) -> set[str]:
    """Job ids that still have a message queued or held unacknowledged by a worker."""
    found: set[str] = set()

    def note(raw: Any, unacked: bool) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("watchdog: a message in Redis is not JSON; ignored")
            return
        task_id = _task_id(message[0] if unacked and isinstance(message, list) and message else message)
        job_id = job_id_of_task(task_id) if task_id else None
        if job_id:
            found.add(job_id)

    for queue in queues:
        for key in (queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS)):
            start = 0
            while True:
                chunk = client.lrange(key, start, start + _SCAN_CHUNK - 1)
                for raw in chunk:
                    note(raw, unacked=False)
                if len(chunk) < _SCAN_CHUNK:
                    break
                start += _SCAN_CHUNK
    for _, raw in client.hscan_iter(UNACKED_KEY, count=_SCAN_CHUNK):
        note(raw, unacked=True)
    return found


def stalled_candidates(store: JobStore, grace_s: float, now: float) -> list[str]:
    """Active jobs with no file recorded for ``grace_s`` (condition 1 of the module rule)."""
    candidates = []
    for job_id in store.active_jobs():
        meta = store.meta(job_id)
        if not meta or meta.get("status") in FINISHED:
            store.forget_active(job_id)  # expired, or finished by the callback
            continue
        last = max(float(meta.get("created_at") or 0.0), float(meta.get("updated_at") or 0.0))
        if now - last >= grace_s:
            candidates.append(job_id)
    return candidates


def sweep(
    store: JobStore,
    queues: Iterable[str],
    outcome_for: Callable[[str], Callable[[int], TaskOutcome]],
    *,
    grace_s: float,
    interval_s: float,
    hard_limit_s: float,
    now: float | None = None,
    data_roots: Sequence[Path] | None = None,
) -> list[str]:
    """One pass of the watchdog; returns the ids of the jobs it finalised."""
    now = time.time() if now is None else now
    candidates = stalled_candidates(store, grace_s, now)
    if not candidates:
        return []
    alive = jobs_with_messages(store.client, queues)
    finalised = []
    for job_id in candidates:
        if job_id in alive:
            store.clear_stalled_seen(job_id)
            continue
        seen = store.mark_stalled_seen(job_id, now)
        if seen is None or now - seen < interval_s * 0.9:
            log.info("job %s: no progress for %.0f s and no message left; checking again", job_id, grace_s)
            continue
        summary = finalize_job(
            job_id, store, outcome_for(job_id), hard_limit_s=hard_limit_s, messages_lost=True, data_roots=data_roots
        )
        lost = sum(1 for s in summary["skipped"] if s["reason"] == "lost")
        log.error(
            "job %s stalled: no progress for %.0f s and no message left in Redis; finalised as %s with %d lost file(s)",
            job_id,
            now - seen + grace_s,
            summary["status"],
            lost,
        )
        finalised.append(job_id)
    return finalised


class Watchdog:
    """A daemon thread running ``sweep`` every ``interval_s``, one sweeper at a time."""

    def __init__(
        self,
        store: JobStore,
        queues: Iterable[str],
        outcome_for: Callable[[str], Callable[[int], TaskOutcome]],
        *,
        grace_s: float,
        interval_s: float,
        hard_limit_s: float,
        name: str,
        data_roots: Sequence[Path] | None = None,
    ) -> None:
        self.store = store
        self.queues = tuple(queues)
        self.outcome_for = outcome_for
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.hard_limit_s = hard_limit_s
        self.name = name
        self.data_roots = data_roots
        self._stop = threading.Event()
        self._full = False
        self._thread = threading.Thread(target=self._run, name="cxr-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                # The lock expires before the next sweep is due, so a dead sweeper never blocks it.
                if not self.store.client.set(LOCK_KEY, self.name, nx=True, ex=max(1, int(self.interval_s * 0.8))):
                    continue
                sweep(
                    self.store,
                    self.queues,
                    self.outcome_for,
                    grace_s=self.grace_s,
                    interval_s=self.interval_s,
                    hard_limit_s=self.hard_limit_s,
                    data_roots=self.data_roots,
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("watchdog: Redis unreachable (%s); next sweep in %g s", type(exc).__name__, self.interval_s)
            except redis.exceptions.OutOfMemoryError:
                if not self._full:  # once per episode, not once a sweep
                    log.warning("watchdog: Redis is full (maxmemory); sweeping again once it has room")
                self._full = True
                continue
            except Exception:
                # The thread must outlive one bad sweep; the traceback goes to the worker's log.
                log.exception("watchdog: sweep failed; next sweep in %g s", self.interval_s)
            self._full = False
