"""API settings in layers: defaults, then the environment, then a test's overrides.

Nothing reads the environment at import time; ``load_config`` is called by the app
factory. Every setting is in the README's configuration table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A secret shorter than this is refused in production (HS256 wants >= 256 bits).
MIN_SECRET_LENGTH = 32

DEFAULTS: dict[str, Any] = {
    "CXR_ENV": "development",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CXR_JWT_SECRET": "",
    "CXR_JWT_SECRET_FILE": "",
    "CXR_TOKEN_DAYS": 30,
    "CXR_DATA_ROOTS": "",
    "CXR_BULK_WAIT_S": 600.0,
    "CXR_SINGLE_WAIT_S": 120.0,
    "CXR_POLL_INTERVAL_S": 0.2,
    "CXR_MAX_BODY_BYTES": 1 << 20,
    # Hostile clients: failed authentications allowed per client address (Flask-Limiter
    # syntax, e.g. "20 per minute"), and how many reverse proxies in front of the API
    # append to X-Forwarded-For (0: the TCP peer is the client).
    "CXR_AUTH_FAIL_LIMIT": "20 per minute",
    "CXR_TRUSTED_PROXIES": 0,
    # Bulk requests with ``wait`` each hold a gunicorn thread for up to CXR_BULK_WAIT_S;
    # at most this many per API process wait at once, the next get 503 with Retry-After
    # (keep it under CXR_API_THREADS, so /ping and the other routes always find a thread).
    "CXR_MAX_BULK_WAITS": 4,
}

_NUMERIC = {
    "CXR_TOKEN_DAYS": int,
    "CXR_BULK_WAIT_S": float,
    "CXR_SINGLE_WAIT_S": float,
    "CXR_POLL_INTERVAL_S": float,
    "CXR_MAX_BODY_BYTES": int,
    "CXR_TRUSTED_PROXIES": int,
    "CXR_MAX_BULK_WAITS": int,
}


class ConfigError(RuntimeError):
    """A setting that makes the service unsafe or unable to start."""


def load_config(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for key in DEFAULTS:
        raw = env.get(key, "").strip()
        if raw:
            config[key] = _NUMERIC[key](raw) if key in _NUMERIC else raw
    config.update(overrides or {})
    config["CXR_JWT_SECRET"] = read_secret(config)
    check_secret(config)
    if config["CXR_ENV"] == "production" and not str(config["CXR_DATA_ROOTS"]).strip():
        raise ConfigError("CXR_DATA_ROOTS is not set; refusing to start in production")
    config["DATA_ROOTS"] = parse_data_roots(config["CXR_DATA_ROOTS"])
    check_client_limits(config)
    return config


def check_client_limits(config: Mapping[str, Any]) -> None:
    """A limit the limiter cannot parse, or a negative proxy count, stops the start-up."""
    from limits import parse_many

    try:
        parse_many(str(config["CXR_AUTH_FAIL_LIMIT"]))
    except ValueError:
        raise ConfigError(
            f"CXR_AUTH_FAIL_LIMIT={config['CXR_AUTH_FAIL_LIMIT']!r} is not a rate limit such as '20 per minute'"
        ) from None
    if int(config["CXR_TRUSTED_PROXIES"]) < 0:
        raise ConfigError("CXR_TRUSTED_PROXIES must be 0 or more")
    if int(config["CXR_MAX_BULK_WAITS"]) < 1:
        raise ConfigError("CXR_MAX_BULK_WAITS must be 1 or more (clients that cannot wait send wait: false)")


def read_secret(config: Mapping[str, Any]) -> str:
    """``CXR_JWT_SECRET``, else the content of ``CXR_JWT_SECRET_FILE`` (a Docker secret)."""
    if config.get("CXR_JWT_SECRET"):
        return str(config["CXR_JWT_SECRET"])
    path = config.get("CXR_JWT_SECRET_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"CXR_JWT_SECRET_FILE {path} cannot be read ({exc.strerror})") from None
    return ""


def check_secret(config: Mapping[str, Any]) -> None:
    secret = config["CXR_JWT_SECRET"]
    if not secret:
        raise ConfigError(
            "no JWT secret: set CXR_JWT_SECRET or CXR_JWT_SECRET_FILE (`make run` generates one for local use)"
        )
    if len(secret) < MIN_SECRET_LENGTH:
        if config["CXR_ENV"] == "production":
            raise ConfigError(
                f"CXR_JWT_SECRET is shorter than {MIN_SECRET_LENGTH} characters; refusing to start in production"
            )
        log.warning("the JWT secret is shorter than %d characters: acceptable for development only", MIN_SECRET_LENGTH)


def parse_data_roots(text: str) -> list[Path]:
    """``engine.discovery.parse_data_roots``: the workers parse the variable the same way.

    Unset, development uses the current directory; production refuses to start.
    """
    from engine.discovery import parse_data_roots as parse

    return parse(text)
