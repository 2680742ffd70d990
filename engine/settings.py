"""The engine's own worker knobs, read once when a worker starts (not at import).

Celery's settings live in ``celeryconfig`` (Celery reads them); these are the project's:
how often a file may kill its worker before it is given up, the stalled-job
watchdog's timing, and the data roots the worker enforces itself. ``WorkerSettings.from_env()`` is called by the worker's start-up
hook (``workers.tasks``), so a test builds one from a plain mapping instead of setting
environment variables before importing anything.

| variable | default | meaning |
|---|---|---|
| ``CXR_MAX_DELIVERIES`` | 3 | deaths of a worker process on one file before the file is skipped as ``worker_lost`` |
| ``CXR_STALL_GRACE_S`` | 120 | a running job with no file recorded for this long (and none of its messages left in Redis) is stalled |
| ``CXR_WATCHDOG_INTERVAL_S`` | 30 | how often the stalled-job watchdog sweeps |
| ``CXR_DATA_ROOTS`` | current directory | the folders every input and output path must lie under (as for the API) |

``CXR_DATA_ROOTS`` is read by the worker too, not trusted from the message: a task's
paths were checked by the API, but a link can be swapped in afterwards and anyone who
reaches Redis can send a task, so the worker checks them again (``reports.beneath``).
Unset, a worker does what the API does: with ``CXR_ENV=production`` it refuses to start
(``ValueError`` at start-up), else it uses its current directory and says so in its log.
The API and the workers must be given the same roots (the compose files do).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.discovery import parse_data_roots

log = logging.getLogger(__name__)


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
    data_roots: tuple[Path, ...] = field(default_factory=lambda: tuple(parse_data_roots("")))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        raw_roots = env.get("CXR_DATA_ROOTS", "").strip()
        if not raw_roots:
            if env.get("CXR_ENV", "development").strip() == "production":
                raise ValueError("CXR_DATA_ROOTS is not set; a worker refuses to start in production without it")
            log.warning("CXR_DATA_ROOTS is not set: paths are accepted under the current directory only")
        return cls(
            data_roots=tuple(parse_data_roots(raw_roots)),
            max_deliveries=max(1, int(_number(env, "CXR_MAX_DELIVERIES", cls.max_deliveries))),
            stall_grace_s=_number(env, "CXR_STALL_GRACE_S", cls.stall_grace_s),
            watchdog_interval_s=_number(env, "CXR_WATCHDOG_INTERVAL_S", cls.watchdog_interval_s),
        )
