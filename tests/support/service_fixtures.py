"""The service under test: real Redis (database ``service``), real ``celery worker`` processes.

A pytest plugin (``pytest_plugins`` in ``tests/conftest.py``): its session fixtures are
made only for the tests that ask for them, so the unit tests start no process.

The API runs in-process through Flask's test client (it is a WSGI app; gunicorn adds
nothing the tests need, and the ``make run`` test covers gunicorn). Workers are real
``celery -A workers.app worker`` processes with the prefork pool, started once per
session; a second one joins only for the tests that need two. Everything a test
creates in Redis lives in that database (``REDIS_DBS`` in ``tests/conftest.py``) and is flushed at the start and end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.live import LiveService, live_service
from tests.support.service import (
    REDIS_TEST_URL,
    SECRET,
    WorkerProcess,
    redis_db_url,
    running_worker,
    worker_env,
)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The only folder the API accepts paths under (``CXR_DATA_ROOTS``)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def app(redis_client: redis.Redis, data_root: Path) -> Any:
    from api import create_app

    return create_app(
        {
            "TESTING": True,
            "REDIS_URL": REDIS_TEST_URL,
            "CXR_JWT_SECRET": SECRET,
            "CXR_DATA_ROOTS": str(data_root),
            "CXR_BULK_WAIT_S": 120.0,
            "CXR_SINGLE_WAIT_S": 60.0,
            "CXR_POLL_INTERVAL_S": 0.1,
            # Every test client request comes from 127.0.0.1; the auth tests alone
            # fail a dozen times a minute. test_rate_limit.py tests the limit itself.
            "CXR_AUTH_FAIL_LIMIT": "1000 per minute",
        }
    )


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="session")
def token(app: Any) -> str:
    from api.auth import issue_token

    return issue_token(app, "pytest")


@pytest.fixture(scope="session")
def auth(token: str) -> dict[str, str]:
    return {"Authorization": token}


@pytest.fixture(scope="session")
def worker(app: Any, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    env = worker_env(CXR_DATA_ROOTS=str(data_root))  # the API's roots: the worker checks them again
    with running_worker("w1", app, tmp_path_factory.mktemp("logs") / "w1.log", env) as w:
        yield w


@pytest.fixture(scope="session")
def second_worker(
    worker: WorkerProcess, app: Any, data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    env = worker_env(CXR_DATA_ROOTS=str(data_root))
    with running_worker("w2", app, tmp_path_factory.mktemp("logs") / "w2.log", env) as w:
        yield w


@pytest.fixture(scope="session")
def small_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 256-pixel phantoms (every storage variant), outside the data root."""
    from demo.phantom_dicom import write_phantoms

    out = tmp_path_factory.mktemp("small-phantoms")
    write_phantoms(out, 6, seed=777, size=256)
    return out


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """gunicorn + a worker on Redis database 7 (tests/support/live.py), shared by
    test_logs.py and test_load.py: starting a worker costs seconds on 2 cores."""
    with live_service(tmp_path_factory.mktemp("live"), redis_db_url("live")) as service:
        yield service
