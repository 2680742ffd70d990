"""``GET /ping`` (no auth, no envelope), ``GET /jobs/<job_id>`` and ``GET /health``.

``GET /jobs/<job_id>`` shows a job to the subject whose token sent it and to admin
tokens (``api.auth.may_read_job``); to anyone else it answers the 404 of an unknown id.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask_jwt_extended import jwt_required

from api.auth import may_read_job
from api.envelope import ApiError, envelope
from workers.app import QUEUES

bp = Blueprint("jobs", __name__)

#: How long ``/health`` waits for workers to answer a ping.
HEALTH_PING_TIMEOUT_S = 1.0


@bp.get("/ping")
def ping() -> Any:
    return jsonify({"status": "ok"})


@bp.get("/jobs/<job_id>")
@jwt_required()
def job_status(job_id: str) -> Any:
    progress = current_app.extensions["cxr_jobs"].progress(job_id) if len(job_id) <= 64 else None
    if progress is None or not may_read_job(progress.owner):
        raise ApiError(404, f"Job not found: {job_id}")
    return envelope(200, f"Job {progress.status}.", progress.as_data())


@bp.get("/health")
@jwt_required()
def health() -> Any:
    """Broker reachable, queue depths, workers that answer a ping within a second.

    200 ``Success`` when the broker answers and at least one worker does; otherwise 503
    ``Failure`` with the same ``Data``, so a monitor can alert on the status code.
    """
    client = current_app.extensions["cxr_redis"]
    client.ping()  # a broker error becomes the 503 of the error handler
    queues = {q: int(client.llen(q)) for q in QUEUES}
    replies = current_app.extensions["cxr_celery"].control.ping(timeout=HEALTH_PING_TIMEOUT_S) or []
    workers = sorted(name for reply in replies for name in reply)
    data = {"broker": "ok", "queues": queues, "workers": workers}
    if not workers:
        return envelope(503, "No worker answered", data, result="Failure")
    return envelope(200, "Healthy", data)
