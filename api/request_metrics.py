"""The API's request metrics (``engine.monitoring``): every answer, by route template and status.

Two hooks on the app: a ``before_request`` registered first (so the clock starts before
authentication and the rate limiter) and an ``after_request`` (which Flask runs for
error handlers' answers too: 401, 404, 429, 500, 503). The route is the URL rule's
template (``/jobs/<job_id>``), or ``<unmatched>`` for a 404 on an unknown path: never
the path itself (unbounded, and a job id). gunicorn's master serves the numbers of all
its processes (``api/gunicorn_conf.py``).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request

from engine import monitoring

UNMATCHED = "<unmatched>"


def init_request_metrics(app: Flask) -> None:
    @app.before_request
    def _start_clock() -> None:
        g.cxr_request_t0 = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.get("cxr_request_t0")
        seconds = time.perf_counter() - started if started is not None else 0.0
        message = None
        if response.status_code in (401, 429):
            body: Any = response.get_json(silent=True)
            message = body.get("Message") if isinstance(body, dict) else None
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        monitoring.request_done(route, request.method, response.status_code, seconds, message)
        return response
