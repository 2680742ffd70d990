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

``CXR_LOG_FORMAT=json`` (default ``text``) makes every handler of the API, the workers
and ``make run`` write one JSON object per line (:class:`JsonFormatter`): ``time`` (UTC,
ISO 8601), ``level``, ``logger``, ``message``, ``process``, and where known ``job_id``,
``task_id`` and ``file_index`` (from the record's ``extra``, else from the context the
API request or the Celery task set with :func:`bind_log_context`, else from Celery's
own ``{"id": ...}`` log arguments), ``exception`` (the traceback, as text) and, on
gunicorn's access lines, ``method``, ``path``, ``status`` and ``duration_ms``. Only
those fields: a record's other attributes (Celery's ``data``, which holds task results)
never reach the line. Masking is the same in both formats: each string field is
redacted before it is encoded, and the encoded line once more.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
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
    """Wrap the formatter of every handler on ``logger`` (idempotent); with
    ``CXR_LOG_FORMAT=json``, replace it by the JSON formatter (redacting too)."""
    secrets = secrets_from_env()
    as_json = log_format() == "json"
    for handler in logger.handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            continue
        inner = JsonFormatter(secrets=secrets) if as_json else handler.formatter or logging.Formatter()
        handler.setFormatter(RedactingFormatter(inner=inner, secrets=secrets))


LOG_FORMATS = ("text", "json")
#: Where known, the job, task and file a log line is about (set per request or task).
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("cxr_log_context", default=None)
_CONTEXT_FIELDS = ("job_id", "task_id", "file_index")


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``CXR_LOG_FORMAT``: ``text`` (default) or ``json``; anything else stops the start-up."""
    value = (os.environ if environ is None else environ).get("CXR_LOG_FORMAT", "").strip().lower() or "text"
    if value not in LOG_FORMATS:
        raise ValueError(f"CXR_LOG_FORMAT={value!r}: use 'text' or 'json'")
    return value


def bind_log_context(**fields: Any) -> None:
    """Add ``job_id`` / ``task_id`` / ``file_index`` to the lines logged from here on (this context)."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def clear_log_context(*_: Any, **__: Any) -> None:
    """Forget the context: at the start of each API request and the end of each task (threads are reused)."""
    _context.set(None)


def bind_task_context(task_id: str | None = None, kwargs: Mapping[str, Any] | None = None, **_: Any) -> None:
    """Celery's ``task_prerun`` hook (``workers.app``): the task's id, and its job and file from its kwargs."""
    kwargs = kwargs or {}
    clear_log_context()
    bind_log_context(task_id=task_id, job_id=kwargs.get("job_id"), file_index=kwargs.get("index"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for the fields)."""

    def __init__(self, *args: Any, secrets: Iterable[str] | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.secrets = list(secrets) if secrets is not None else secrets_from_env()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        context = _context.get() or {}
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = context.get(name)
            if value is not None:
                line[name] = value
        args = record.args if isinstance(record.args, Mapping) else {}
        if "task_id" not in line and record.name.startswith("celery") and isinstance(args.get("id"), str):
            line["task_id"] = args["id"]
        if record.name == "gunicorn.access" and "U" in args:  # gunicorn's access-log atoms
            line.update(method=args.get("m"), path=args.get("U"), status=_int(args.get("s")))
            line["duration_ms"] = _int(args.get("M"))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        line = {k: redact(v, self.secrets) if isinstance(v, str) else v for k, v in line.items()}
        return json.dumps(line, ensure_ascii=False, default=str)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def formatter(
    fmt: str | None = None, datefmt: str | None = None, environ: Mapping[str, str] | None = None
) -> logging.Formatter:
    """The redacting formatter of ``CXR_LOG_FORMAT``: ``fmt`` for text, JSON lines for json.

    A ``logging.config`` factory (``"()": "engine.logs.formatter"``, ``api/gunicorn_conf.py``).
    """
    if log_format(environ) == "json":
        return RedactingFormatter(inner=JsonFormatter())
    return RedactingFormatter(fmt, datefmt)


#: Per routed fd (1, 2): the process that routed it, the original target, the pipe's read end.
_native: dict[int, dict[str, int]] = {}
_pumps: dict[tuple[int, int], threading.Thread] = {}
_NATIVE_LEVEL = re.compile(r"^([IWEF])\d{4} ")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_STREAMS = {1: ("native.stdout", logging.INFO), 2: ("native.stderr", logging.WARNING)}


def route_native_output(*_: Any, **__: Any) -> None:
    """With ``CXR_LOG_FORMAT=json``, what is written to this process's stdout and stderr
    outside logging becomes JSON lines too: native code (TensorFlow's C++ runtime, absl,
    CUDA: ``W0000 ...``; logger ``native.stderr``) and Celery's direct prints (``worker:
    Warm shutdown``; logger ``native.stdout``).

    File descriptors 1 and 2 each become a pipe that a daemon thread reads line by line:
    a line that already is a JSON object (the logging handlers' own) passes unchanged, any
    other is wrapped and redacted. Once per process (a forked child sets up its own pipes,
    so processes never interleave in one pipe); a no-op in the text format.
    """
    if log_format() != "json":
        return
    for fd in (1, 2):
        state = _native.get(fd)
        if state is not None and state["pid"] == os.getpid():
            continue
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        if state is not None:  # a child: the parent's pipe is not ours; write where the parent writes
            target = state["target"]
            os.close(state["read"])
        else:
            target = os.dup(fd)
        read, write = os.pipe()
        os.dup2(write, fd)
        os.close(write)
        _native[fd] = {"pid": os.getpid(), "target": target, "read": read}
        pump = threading.Thread(target=_pump, args=(read, target, fd), name=f"native-fd{fd}", daemon=True)
        pump.start()
        _pumps[(os.getpid(), fd)] = pump
    atexit.register(stop_native_output)


def stop_native_output(*_: Any, **__: Any) -> None:
    """Give fds 1 and 2 back and let the pumps drain what is left (the last lines of a
    process that exits: atexit, and Celery's ``worker_process_shutdown`` for prefork
    children, which leave with ``os._exit``)."""
    for fd in (1, 2):
        pump = _pumps.pop((os.getpid(), fd), None)
        if pump is None:
            continue
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os.dup2(_native[fd]["target"], fd)  # the pipe's last write end here closes: the pump reads to EOF
        pump.join(timeout=2.0)


def _pump(read: int, target: int, fd: int) -> None:
    fmt = formatter()
    name, default_level = _STREAMS[fd]
    with os.fdopen(read, "rb", closefd=False) as stream:
        for raw in stream:
            try:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not text.strip():
                    continue
                if text.startswith("{"):
                    try:
                        json.loads(text)
                        os.write(target, text.encode("utf-8") + b"\n")
                        continue
                    except ValueError:
                        pass
                match = _NATIVE_LEVEL.match(text)
                level = _NATIVE_LEVELS[match.group(1)] if match else default_level
                record = logging.LogRecord(name, level, "", 0, text, None, None)
                os.write(target, fmt.format(record).encode("utf-8") + b"\n")
            except Exception:  # noqa: BLE001, S112 - the pump must outlive any line, or writers to the fd block
                continue


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
