"""Failed authentications per client address are rate-limited (Flask-Limiter, Redis storage).

Only answers with status 401 count (``deduct_when``), one counter per client address
across every route but ``/ping`` and ``/openapi.json`` (an application-wide limit, moving window,
``CXR_AUTH_FAIL_LIMIT``, default 20 per minute). Once an address is over the limit,
*every* request from it but ``/ping`` answers 429, a valid token included, until the
window has room again: checking the token first and answering 429 only for bad ones
would tell a guesser which token is good, which is what the limit is there to stop.

The counters live in Redis under ``cxr:limit`` (so every gunicorn process and API host
shares them) and expire with their window. Redis unreachable: the check raises the
Redis error, which the app answers with its usual 503, never a 500; ``/ping`` never
touches the limiter. Behind reverse proxies, ``CXR_TRUSTED_PROXIES`` (the number of
proxies that append to ``X-Forwarded-For``) makes the limiter see the client's address
instead of the proxy's; with 0, ``X-Forwarded-For`` is ignored, so a client cannot
dodge the limit by sending one.
"""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Flask, Response
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

from api.envelope import envelope

KEY_PREFIX = "cxr:limit"
TOO_MANY_FAILURES = "Too many failed authentication attempts; try again later"
#: Seconds a Redis call of the limiter may take before it counts as unreachable.
STORAGE_TIMEOUT_S = 3


def _failed_authentication(response: Response) -> bool:
    return response.status_code == 401


def init_rate_limit(app: Flask) -> Limiter:
    proxies = int(app.config["CXR_TRUSTED_PROXIES"])
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies)  # type: ignore[method-assign]
    limiter = Limiter(
        get_remote_address,
        app=app,
        application_limits=[app.config["CXR_AUTH_FAIL_LIMIT"]],
        application_limits_deduct_when=_failed_authentication,
        strategy="moving-window",
        storage_uri=app.config["REDIS_URL"],
        storage_options={"socket_connect_timeout": STORAGE_TIMEOUT_S, "socket_timeout": STORAGE_TIMEOUT_S},
        key_prefix=KEY_PREFIX,
        swallow_errors=False,  # a Redis error reaches the app's 503 handler
        headers_enabled=False,  # no X-RateLimit-* on every answer; Retry-After on the 429 only
    )
    limiter.exempt(app.view_functions["jobs.ping"])
    limiter.exempt(app.view_functions["openapi.openapi"])

    @app.errorhandler(RateLimitExceeded)
    def _too_many(_exc: RateLimitExceeded) -> Any:
        current = limiter.current_limit
        retry_after = max(1, math.ceil(current.reset_at - time.time())) if current else 60
        response, status = envelope(429, TOO_MANY_FAILURES, {"retry_after_s": retry_after}, result="Failure")
        response.headers["Retry-After"] = str(retry_after)
        return response, status

    return limiter
