"""The one Celery application of CXR Engine, configured from ``celeryconfig``.

``celery -A workers.app worker`` finds ``app`` here. Importing this module builds
nothing: ``app`` is made on first access (PEP 562 ``__getattr__``), which only a worker
(through ``-A workers.app`` or ``workers.tasks``) does; that is also when the worker's
logging hooks are connected. The API builds its own app with ``create_celery_app`` to
*send* tasks by name, and never imports ``workers.tasks`` (which brings in TensorFlow).
Task modules are listed in ``include`` and imported by workers only.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery, signals

import celeryconfig
from workers.backend import backend_url

INFERENCE_QUEUE = celeryconfig.INFERENCE_QUEUE
DEFAULT_QUEUE = celeryconfig.DEFAULT_QUEUE

_lock = threading.Lock()
_worker_app: list[Celery] = []


def create_celery_app(redis_url: str | None = None) -> Celery:
    """The app; ``redis_url`` overrides ``REDIS_URL`` for broker and results (the API's config)."""
    app = Celery("cxr", include=["workers.tasks"])
    app.config_from_object(celeryconfig)
    if redis_url is not None:
        app.conf.update(broker_url=redis_url, result_backend=backend_url(redis_url))
    return app


def worker_app() -> Celery:
    """The worker's app, made once per process, with the worker's logging hooks."""
    with _lock:
        if not _worker_app:
            from engine.logs import setup_worker_logging

            # What a worker's log never carries (task results hold patient names; engine/logs.py).
            signals.after_setup_logger.connect(setup_worker_logging, weak=False)
            signals.after_setup_task_logger.connect(setup_worker_logging, weak=False)
            _worker_app.append(create_celery_app())
        return _worker_app[0]


def __getattr__(name: str) -> Any:
    if name == "app":
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
