"""The one Celery application of CXR Engine, configured from ``celeryconfig``.

``celery -A workers.app worker`` finds ``app`` here. Task modules are listed in
``include`` and imported by workers only: the API imports this module to *send* tasks
by name, and never imports ``workers.tasks`` (which brings in TensorFlow).
"""

from __future__ import annotations

from celery import Celery

import celeryconfig

INFERENCE_QUEUE = celeryconfig.INFERENCE_QUEUE
DEFAULT_QUEUE = celeryconfig.DEFAULT_QUEUE


def create_celery_app() -> Celery:
    app = Celery("cxr", include=["workers.tasks"])
    app.config_from_object(celeryconfig)
    return app


app = create_celery_app()
