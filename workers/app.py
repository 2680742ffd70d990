"""The one Celery application of CXR Engine, configured from ``celeryconfig``.

``celery -A workers.app worker`` finds ``app`` here. Task modules are listed in
``include`` and imported by workers only: the API imports this module to *send* tasks
by name, and never imports ``workers.tasks`` (which brings in TensorFlow).
"""

from __future__ import annotations

from celery import Celery, signals

import celeryconfig
from cxr.logs import setup_worker_logging
from workers.backend import backend_url

INFERENCE_QUEUE = celeryconfig.INFERENCE_QUEUE
DEFAULT_QUEUE = celeryconfig.DEFAULT_QUEUE


def create_celery_app(redis_url: str | None = None) -> Celery:
    """The app; ``redis_url`` overrides ``REDIS_URL`` for broker and results (the API's config)."""
    app = Celery("cxr", include=["workers.tasks"])
    app.config_from_object(celeryconfig)
    if redis_url is not None:
        app.conf.update(broker_url=redis_url, result_backend=backend_url(redis_url))
    return app


app = create_celery_app()

# What a worker's log never carries (task results hold patient names; cxr/logs.py).
signals.after_setup_logger.connect(setup_worker_logging)
signals.after_setup_task_logger.connect(setup_worker_logging)
