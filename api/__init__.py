"""The HTTP API (Flask): ``create_app`` builds it; gunicorn serves ``api:create_app()``.

The API validates requests, lists folders, records jobs and sends tasks; it never
imports TensorFlow (inference runs on workers, single inference included). Its Redis
connections (job store, token deny list) and the Celery app that sends tasks live in
``app.extensions``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import kombu.exceptions
import redis
from flask import Flask, request
from werkzeug.exceptions import HTTPException

from api.auth import init_auth
from api.config import load_config
from api.envelope import ApiError, envelope, error_response
from api.ratelimit import init_rate_limit

log = logging.getLogger(__name__)

BROKER_DOWN = "Message broker unreachable; try again later"
BROKER_FULL = "Message broker is full; try again later"
#: Redis unreachable, or full (``maxmemory`` with ``noeviction`` refuses writes with OOM,
#: a ResponseError): either passes once the operator acts, so either is a 503, never a 500.
BROKER_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    kombu.exceptions.OperationalError,
)


def serve_command(python: str | None = None) -> list[str]:
    """The command line that serves the API as ``make run`` does (gunicorn, ``api.gunicorn_conf``,
    settings from the environment): one place for it, used by the launcher, the tests and the bench."""
    return [python or sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf", "api:create_app()"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    from engine.jobstore import JobStore
    from workers.app import create_celery_app

    app = Flask(__name__, static_folder=None)  # no static files: every route is in api/openapi.yaml
    app.config.update(load_config(overrides=test_config))
    app.config["MAX_CONTENT_LENGTH"] = app.config["CXR_MAX_BODY_BYTES"]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]

    store = JobStore.from_url(app.config["REDIS_URL"], retries=2)
    celery = create_celery_app(app.config["REDIS_URL"])
    celery.conf.update(broker_connection_timeout=3.0, broker_connection_max_retries=1)
    app.extensions["cxr_jobs"] = store
    app.extensions["cxr_redis"] = store.client
    app.extensions["cxr_celery"] = celery

    from api.request_metrics import init_request_metrics
    from engine.logs import clear_log_context

    init_request_metrics(app)  # first: its clock starts before authentication and the limiter
    app.before_request(clear_log_context)  # gthread threads are reused: no job id from the last request
    init_auth(app)
    from api import inference_routes, job_routes, openapi

    app.register_blueprint(job_routes.bp)
    app.register_blueprint(inference_routes.bp)
    inference_routes.init_bulk(app)
    app.register_blueprint(openapi.bp)
    init_rate_limit(app)  # after the blueprints: it exempts /ping and /openapi.json by their view functions
    _register_error_handlers(app)
    return app


def _redis_full(exc: BaseException | None) -> bool:
    """Whether a full Redis is behind ``exc`` (kombu re-raises it as its OperationalError)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, error_response)

    def _broker_down(exc: Exception) -> Any:
        if _redis_full(exc):
            log.error("broker full: Redis refuses writes (maxmemory reached); make room or raise maxmemory")
            return envelope(503, BROKER_FULL, result="Failure")
        log.error("broker unreachable: %s", type(exc).__name__)
        return envelope(503, BROKER_DOWN, result="Failure")

    for exc_class in BROKER_ERRORS:
        app.register_error_handler(exc_class, _broker_down)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        # An error raised after the view (an ``after_request`` hook: the rate limiter counts a
        # failed authentication there) reaches Flask's 500 handler wrapped, not its own handler.
        original = getattr(exc, "original_exception", None)
        if isinstance(original, BROKER_ERRORS):
            return _broker_down(original)
        messages = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}
        code = exc.code or 500
        return envelope(code, messages.get(code, exc.name), result="Failure")

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Any:
        log.exception("unhandled error")  # the operator's log has the traceback; the client never does
        messages = {
            "inference.single_inference": "Single Inference failed due to an internal error",
            "inference.bulk_inference": "Bulk inference failed due to an internal error",
        }
        return envelope(500, messages.get(request.endpoint or "", "Internal server error"), result="Failure")
