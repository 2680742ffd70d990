"""cxr/logs.py: the safety net masks tokens and secrets, and Celery's success line loses
the task's return value before it is formatted."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from engine.logs import (
    JsonFormatter,
    OmitTaskResults,
    RedactingFormatter,
    bind_log_context,
    clear_log_context,
    formatter,
    log_format,
    redact,
    secrets_from_env,
)

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4IiwiZXhwIjoxfQ.c2lnbmF0dXJlLWJ5dGVz"


def test_secrets_come_from_every_place_this_process_holds_one(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text("from-the-secret-file\n")
    found = secrets_from_env(
        {
            "CXR_JWT_SECRET": "jwt-secret-value",
            "CXR_JWT_SECRET_FILE": str(secret_file),
            "FLOWER_BASIC_AUTH": "ops:flower-pass-1,audit:flower-pass-2",
            "REDIS_URL": "redis://:redis-password@db:6379/0",
            "CXR_DATA_ROOTS": "/data",
        }
    )
    assert set(found) == {
        "jwt-secret-value",
        "from-the-secret-file",
        "flower-pass-1",
        "flower-pass-2",
        "redis-password",
    }
    assert secrets_from_env({"CXR_JWT_SECRET": "abc", "REDIS_URL": "redis://db:6379/0"}) == []  # too short to mask


def test_tokens_and_secrets_are_masked_in_messages_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s", secrets=["hunter2-secret"]))
    logger = logging.getLogger("test-cxr-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("header was %s with key %s", TOKEN, "hunter2-secret")
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert TOKEN not in text and "hunter2-secret" not in text
    assert text.count("<token>") == 2 and "<secret>" in text and "ValueError" in text
    assert redact("job 0123 done") == "job 0123 done"


def test_celery_success_line_keeps_everything_but_the_return_value() -> None:
    context = {
        "id": "t1",
        "name": "cxr.infer_single",
        "runtime": 0.5,
        "return_value": "{'metadata': {'patient_name': 'DOE^JANE'}}",
    }
    record = logging.LogRecord(
        "celery.app.trace",
        logging.INFO,
        __file__,
        1,
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        (context,),
        None,
    )
    record.data = context
    assert OmitTaskResults().filter(record)
    assert record.getMessage() == "Task cxr.infer_single[t1] succeeded in 0.5s: (result not logged)"
    assert "DOE" not in str(record.data)


def _json_lines(formatter: logging.Formatter, emit: Any) -> list[dict[str, Any]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test-cxr-json")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_json_lines_carry_the_fields_and_the_context_and_mask_like_text() -> None:
    secret = "hunter2-secret-Ünïcode"

    def emit(logger: logging.Logger) -> None:
        logger.info("plain line")
        bind_log_context(job_id="job-1", file_index=3)
        logger.warning("key %s, token %s", secret, TOKEN)
        try:
            raise ValueError(f"bad token {TOKEN} and {secret}\nsecond line")
        except ValueError:
            logger.exception("failed")
        clear_log_context()
        logger.info("explicit", extra={"task_id": "t-9"})

    fmt = RedactingFormatter(inner=JsonFormatter(secrets=[secret]), secrets=[secret])
    plain, masked, failed, explicit = _json_lines(fmt, emit)
    assert set(plain) == {"time", "level", "logger", "message", "process"}
    assert plain["level"] == "INFO" and plain["logger"] == "test-cxr-json" and plain["time"].endswith("Z")
    assert (masked["job_id"], masked["file_index"]) == ("job-1", 3)
    assert masked["message"] == "key <secret>, token <token>"
    assert (
        failed["exception"].startswith("Traceback")
        and "ValueError: bad token <token> and <secret>" in failed["exception"]
    )
    assert "job_id" not in explicit and explicit["task_id"] == "t-9"  # the context was cleared


def test_json_takes_celery_task_ids_and_gunicorn_access_fields_but_never_task_results() -> None:
    context = {"id": "t1", "name": "cxr.infer_single", "runtime": 0.5, "return_value": "DOE^JANE"}
    trace = logging.LogRecord(
        "celery.app.trace", logging.INFO, __file__, 1, "Task %(name)s[%(id)s] done", (context,), None
    )
    trace.data = context  # Celery's structured copy of the arguments: never dumped
    access = logging.LogRecord(
        "gunicorn.access",
        logging.INFO,
        __file__,
        1,
        "%(m)s %(U)s %(s)s",
        ({"m": "GET", "U": "/ping", "s": "200", "M": "3"},),
        None,
    )
    fmt = JsonFormatter(secrets=[])
    trace_line, access_line = json.loads(fmt.format(trace)), json.loads(fmt.format(access))
    assert trace_line["task_id"] == "t1" and "DOE" not in json.dumps(trace_line)
    assert (access_line["method"], access_line["path"], access_line["status"], access_line["duration_ms"]) == (
        "GET",
        "/ping",
        200,
        3,
    )


def test_log_format_setting() -> None:
    assert log_format({}) == "text" and log_format({"CXR_LOG_FORMAT": " JSON "}) == "json"
    with pytest.raises(ValueError, match="CXR_LOG_FORMAT"):
        log_format({"CXR_LOG_FORMAT": "xml"})
    assert not isinstance(formatter("%(message)s", environ={}).inner, JsonFormatter)  # type: ignore[attr-defined]
    assert isinstance(formatter(environ={"CXR_LOG_FORMAT": "json"}).inner, JsonFormatter)  # type: ignore[attr-defined]
