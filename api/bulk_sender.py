"""Sending the chords of ``wait: false`` bulk jobs after their 202 (issue 15, item 8).

Sending costs about 2 ms per file in the API process (30,000 files: a minute), so the
request only writes the job record and hands the send to a ``BackgroundSender``: a few
threads per API process (``SENDER_THREADS``), jobs sent in the order they came.

A job waiting for its turn has no message in Redis and no file recorded: exactly what
the workers' stalled-job watchdog (``workers.watchdog``) fails after
``CXR_STALL_GRACE_S``. So while jobs wait, a heartbeat thread touches each one's record
(``JobStore.touch``, every ``HEARTBEAT_S``), and a job is touched again as its send
starts; from its first message on, the watchdog sees the messages. If the API process
dies, the heartbeat stops with it, and the watchdog fails the jobs it never sent, every
file ``lost``: nothing stays ``queued`` forever.

Threads start on first use, after gunicorn's fork. They are not daemons: a worker
process that is stopped gracefully finishes its sends first (within gunicorn's
``graceful_timeout``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

log = logging.getLogger(__name__)

#: Background threads per API process that send chords.
SENDER_THREADS = 2
#: How often the record of a job waiting to be sent is touched (well under the
#: watchdog's default grace of 120 s).
HEARTBEAT_S = 10.0


class BackgroundSender:
    def __init__(self, threads: int = SENDER_THREADS, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cxr-send")
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._waiting: dict[str, Any] = {}  # job id -> its JobStore
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    def submit(self, job_id: str, store: Any, send: Callable[[], None]) -> None:
        """Run ``send`` (which must end the job ``failed`` itself if it cannot send) in turn."""
        with self._lock:
            self._waiting[job_id] = store
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=self._beat, name="cxr-send-heartbeat", daemon=True)
                self._heartbeat.start()
        self.executor.submit(self._run, job_id, store, send)

    def waiting(self) -> list[str]:
        with self._lock:
            return list(self._waiting)

    def shutdown(self) -> None:
        """Send what was submitted, then stop (tests; a process exit does the same)."""
        self.executor.shutdown(wait=True)
        self._stop.set()

    def _run(self, job_id: str, store: Any, send: Callable[[], None]) -> None:
        with self._lock:
            self._waiting.pop(job_id, None)
        try:
            store.touch(job_id)  # the watchdog's clock restarts as the send starts
        except redis.RedisError as exc:  # Redis away: the send below fails too, and says so
            log.warning("job %s: could not note that its send starts (%s)", job_id, type(exc).__name__)
        send()  # marks the job failed itself when it cannot send; logs what it cannot name

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                waiting = list(self._waiting.items())
            for job_id, store in waiting:
                try:
                    store.touch(job_id)
                except redis.RedisError as exc:  # Redis away: the next beat tries again
                    log.warning("job %s: could not note that it waits to be sent (%s)", job_id, type(exc).__name__)
