"""cxr/logs.py: the safety net masks tokens and secrets, and Celery's success line loses
the task's return value before it is formatted."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from engine.logs import OmitTaskResults, RedactingFormatter, redact, secrets_from_env

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
