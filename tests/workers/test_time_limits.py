"""A file over the per-file time limit becomes a ``timeout`` skip and the job completes.

Two ways a limit fires, each against its own real worker (in Redis database 14, so the
tight limits never touch other tests' tasks):

* soft limit first: ``SoftTimeLimitExceeded`` is raised inside the task, which reports
  the skip itself;
* hard limit only (soft limit disabled): the child process is killed, the task cannot
  report, the chord fails, and the callback's error hook finalises the job, naming the
  file from its task's stored state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.service import SECRET, redis_db_url, running_worker, worker_env

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

LIMITS_DB_URL = redis_db_url("time_limits")


@pytest.fixture(scope="module")
def slow_and_fast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3072-pixel JPEG 2000 file (over a second of work) and a 256-pixel one (under 0.1 s warm).

    Since the reports got faster, a 2048-pixel file finishes in about 1 s on a quiet
    machine and a 3072-pixel one in about 1.2 s: the hard limit is 0.75 s.
    """
    from demo.phantom_dicom import write_phantoms

    root = tmp_path_factory.mktemp("limits")
    big, small = root / "big", root / "small"
    write_phantoms(big, 1, seed=99, size=3072, compression="j2k")
    write_phantoms(small, 1, seed=98, size=256, compression="none")
    inp = root / "in"
    inp.mkdir()
    next(big.glob("*.dcm")).rename(inp / "a-slow.dcm")
    next(small.glob("*.dcm")).rename(inp / "b-fast.dcm")
    return root


@pytest.fixture(params=["soft", "hard"])
def limited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, slow_and_fast: Path
) -> Iterator[tuple[str, Any]]:
    from api import create_app

    limits = {
        "soft": {"CXR_TASK_SOFT_LIMIT_S": "1.0", "CXR_TASK_HARD_LIMIT_S": "60"},
        "hard": {"CXR_TASK_SOFT_LIMIT_S": "0", "CXR_TASK_HARD_LIMIT_S": "0.75"},
    }[request.param]
    client = redis.Redis.from_url(LIMITS_DB_URL)
    client.flushdb()
    app = create_app(
        {
            "REDIS_URL": LIMITS_DB_URL,
            "CXR_JWT_SECRET": SECRET,
            "CXR_DATA_ROOTS": str(slow_and_fast),
            "CXR_BULK_WAIT_S": 120.0,
            "CXR_POLL_INTERVAL_S": 0.1,
        }
    )
    try:
        with running_worker(
            f"limits-{request.param}",
            app,
            tmp_path_factory.mktemp("logs") / "w.log",
            worker_env(LIMITS_DB_URL, **limits),
        ):
            yield request.param, app
    finally:
        client.flushdb()


def test_time_limit_becomes_a_timeout_skip(limited: tuple[str, Any], slow_and_fast: Path) -> None:
    from api.auth import issue_token

    kind, app = limited
    response = app.test_client().post(
        "/bulk_inference",
        headers={"Authorization": issue_token(app, "limits")},
        json={"input_folder_path": str(slow_and_fast / "in"), "output_folder_path": str(slow_and_fast / kind)},
    )
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()["Data"]
    assert summary["status"] == "completed"
    assert summary["total"] == 2
    assert summary["processed"] == 1
    assert [Path(p).name for p in summary["outputs"]] == ["b-fast.dcm"]
    [skip] = summary["skipped"]
    assert Path(skip["path"]).name == "a-slow.dcm"
    assert skip["reason"] == "timeout"
    assert skip["detail"].startswith({"soft": "soft time limit of 1 s", "hard": "hard time limit of 0.75 s"}[kind])
    folders = [p.name for p in (slow_and_fast / kind).iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1  # the slow file published nothing
