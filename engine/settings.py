"""The engine's own worker knobs, read once when a worker starts (not at import).

Celery's settings live in ``celeryconfig`` (Celery reads them); these are the project's:
how often a file may kill its worker before it is given up, and the stalled-job
watchdog's timing. ``WorkerSettings.from_env()`` is called by the worker's start-up
hook (``workers.tasks``), so a test builds one from a plain mapping instead of setting
environment variables before importing anything.

| variable | default | meaning |
|---|---|---|
| ``CXR_MAX_DELIVERIES`` | 3 | deaths of a worker process on one file before the file is skipped as ``worker_lost`` |
| ``CXR_STALL_GRACE_S`` | 120 | a running job with no file recorded for this long (and none of its messages left in Redis) is stalled |
| ``CXR_WATCHDOG_INTERVAL_S`` | 30 | how often the stalled-job watchdog sweeps |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class WorkerSettings:
    max_deliveries: int = 3
    stall_grace_s: float = 120.0
    watchdog_interval_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        return cls(
            max_deliveries=max(1, int(_number(env, "CXR_MAX_DELIVERIES", cls.max_deliveries))),
            stall_grace_s=_number(env, "CXR_STALL_GRACE_S", cls.stall_grace_s),
            watchdog_interval_s=_number(env, "CXR_WATCHDOG_INTERVAL_S", cls.watchdog_interval_s),
        )
