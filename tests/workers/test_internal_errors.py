"""An internal error answers the contract's message and never echoes exception text.

The errors are real broken states, not mocks: an API configured with a Redis database
that does not exist (every Redis call fails with ``DB index is out of range``), and a
job record that another program overwrote with the wrong Redis type (``WRONGTYPE``).
Redis database 6 on ``CXR_TEST_REDIS`` (flushed at start and end); the operator's log
must have the exception, the client's answer must not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.service import SECRET, redis_db_url

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

REDIS_URL = redis_db_url("internal_errors")
#: Redis has 16 databases unless configured otherwise.
MISSING_DB_URL = redis_db_url("missing")
LEAKS = ("Traceback", "Error", "WRONGTYPE", "out of range", "redis", 'File "')


def make_app(redis_url: str, data_root: Path) -> Any:
    from api import create_app

    return create_app(
        {"TESTING": True, "REDIS_URL": redis_url, "CXR_JWT_SECRET": SECRET, "CXR_DATA_ROOTS": str(data_root)}
    )


@pytest.fixture(scope="module")
def db6() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def assert_no_exception_text(response: Any) -> None:
    text = response.get_data(as_text=True)
    assert not [leak for leak in LEAKS if leak in text], text


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("get", "/jobs/0123456789abcdef", None, "Internal server error"),
        ("get", "/health", None, "Internal server error"),
        (
            "post",
            "/bulk_inference",
            {"input_folder_path": "{root}", "output_folder_path": "{root}/out"},
            "Bulk inference failed due to an internal error",
        ),
        (
            "post",
            "/single_inference",
            {"input_image_path": "{root}/x.dcm", "save_to_disk": False},
            "Single Inference failed due to an internal error",
        ),
    ],
)
def test_a_redis_that_refuses_every_call_gives_each_route_its_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, path: str, body: Any, message: str
) -> None:
    from api.auth import issue_token

    app = make_app(MISSING_DB_URL, tmp_path)
    if body is not None:
        body = {k: v.format(root=tmp_path) if isinstance(v, str) else v for k, v in body.items()}
    with caplog.at_level(logging.ERROR, logger="api"):
        response = getattr(app.test_client(), method)(path, json=body, headers={"Authorization": issue_token(app, "t")})
    assert response.status_code == 500
    assert response.get_json() == {"Result": "Failure", "Data": None, "Message": message}
    assert_no_exception_text(response)
    assert "DB index is out of range" in caplog.text  # the operator's log has it


def test_a_corrupted_job_record_is_a_500_without_its_error(
    db6: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from api.auth import issue_token
    from engine.jobstore import JOB_KEY

    app = make_app(REDIS_URL, tmp_path)
    db6.set(JOB_KEY.format(job_id="c0ffee"), "not a hash")
    with caplog.at_level(logging.ERROR, logger="api"):
        response = app.test_client().get("/jobs/c0ffee", headers={"Authorization": issue_token(app, "t")})
    assert (response.status_code, response.get_json()["Message"]) == (500, "Internal server error")
    assert_no_exception_text(response)
    assert "WRONGTYPE" in caplog.text
