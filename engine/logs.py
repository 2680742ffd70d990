"""What the logs never carry, and the safety net that catches it if code slips.

The rule (README, Operations): logs carry job ids, file paths, patient ids (they name the
output folders) and reason codes; never request bodies, tokens, the JWT secret, the
Flower password, the Redis password or patient names. The code keeps to it by not
logging those things (the API logs no bodies or headers, gunicorn's access log format
has no query string, user or referer, workers log no task results). This module is only
the net under it: a formatter that replaces anything shaped like a JWT, and the secret
values this process knows from its environment, after the message is formatted
(tracebacks included). It cannot know patient names; those are kept out by not logging
them.

Used by ``api/gunicorn_conf.py`` (the API's and gunicorn's own handlers) and by the
Celery worker's logging set-up (``workers.app``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Compact JWS: base64url header starting with '{"' (eyJ), payload, signature.
TOKEN_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
TOKEN_MASK = "<token>"
SECRET_MASK = "<secret>"
#: Shorter values are not masked: a 3-character "secret" would mask ordinary words.
MIN_SECRET_CHARS = 6


def secrets_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values this process holds: JWT secret, Flower password, Redis password."""
    env = os.environ if environ is None else environ
    found = [env.get("CXR_JWT_SECRET", "")]
    if path := env.get("CXR_JWT_SECRET_FILE", ""):
        try:
            found.append(Path(path).read_text(encoding="utf-8").strip())
        except OSError:
            pass  # the API reports an unreadable secret file itself, at start-up
    for pair in env.get("FLOWER_BASIC_AUTH", "").split(","):
        found.append(pair.partition(":")[2])
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        try:
            found.append(urlsplit(env.get(name, "")).password or "")
        except ValueError:
            continue
    return sorted({s for s in found if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, SECRET_MASK)
    return TOKEN_PATTERN.sub(TOKEN_MASK, text)


class RedactingFormatter(logging.Formatter):
    """Formats like ``inner`` (or like a plain Formatter with the given format), then redacts."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        *,
        inner: logging.Formatter | None = None,
        secrets: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fmt, datefmt, **kwargs)
        self.inner = inner
        self.secrets = list(secrets) if secrets is not None else secrets_from_env()

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record) if self.inner is not None else super().format(record)
        return redact(text, self.secrets)


def redact_handlers(logger: logging.Logger) -> None:
    """Wrap the formatter of every handler on ``logger`` (idempotent)."""
    secrets = secrets_from_env()
    for handler in logger.handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(inner=handler.formatter or logging.Formatter(), secrets=secrets))


def redact_also(logger: logging.Logger, *secrets: str) -> None:
    """Mask ``secrets`` too in ``logger``'s handlers from now on: a secret made after the
    handlers were set up (``make run``'s Redis password)."""
    redact_handlers(logger)
    for handler in logger.handlers:
        formatter = handler.formatter
        if isinstance(formatter, RedactingFormatter):
            known = set(formatter.secrets) | {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
            formatter.secrets = sorted(known, key=len, reverse=True)


class OmitTaskResults(logging.Filter):
    """Celery's success line without the task's return value.

    Celery logs ``Task <name>[<id>] succeeded in <s>s: <return value>`` at INFO. The
    tasks return ids and statuses only (``cxr.infer_single`` once returned what the API
    answers, the patient's name included; its answer now goes through
    ``workers.single``), and this filter stays as the net under that rule. Celery has
    no setting for that line's format, and
    raising the ``celery.app.trace`` logger above INFO would also hide its retry lines;
    this filter, on that logger, keeps the line (task, id, runtime) and drops the value
    before it is ever formatted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping) and "return_value" in record.args:
            record.args = {**record.args, "return_value": "(result not logged)"}
        data = getattr(record, "data", None)
        if isinstance(data, Mapping) and "return_value" in data:
            record.data = {**data, "return_value": "(result not logged)"}
        return True


def setup_worker_logging(logger: logging.Logger | None = None, **_: Any) -> None:
    """Celery's ``after_setup_logger`` / ``after_setup_task_logger`` hook (``workers.app``)."""
    trace = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, OmitTaskResults) for f in trace.filters):
        trace.addFilter(OmitTaskResults())
    if logger is not None:
        redact_handlers(logger)
