"""Broker faults: Redis down, restarted (with and without its data), messages lost.

The module runs its own ``redis-server`` on a free port (it must stop and restart it;
the shared test server is never touched), with the append-only file on as in
production, and one real worker on it. The API runs through Flask's test client with
the production connection settings. Order matters only for speed: every test leaves
Redis running and the worker connected.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.faults import PrivateRedis, assert_published_once
from tests.support.service import (
    SECRET,
    WorkerProcess,
    redis_db_url,
    wait_for_job,
    worker_env,
)

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

WORKER_SETTINGS = {"CXR_VISIBILITY_TIMEOUT_S": "5", "CXR_STALL_GRACE_S": "3", "CXR_WATCHDOG_INTERVAL_S": "1"}
BROKER_DOWN = "Message broker unreachable; try again later"
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    s = PrivateRedis(tmp_path_factory.mktemp("redis"), appendonly=True)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults-redis")


@pytest.fixture(scope="module")
def api(server: PrivateRedis, root: Path) -> Any:
    from api import create_app

    return create_app(
        {
            "REDIS_URL": server.url,
            "CXR_JWT_SECRET": SECRET,
            "CXR_DATA_ROOTS": str(root),
            "CXR_BULK_WAIT_S": 0.0,
            "CXR_POLL_INTERVAL_S": 0.1,
        }
    )


@pytest.fixture(scope="module")
def auth(api: Any) -> dict[str, str]:
    from api.auth import issue_token

    return {"Authorization": issue_token(api, "faults")}


@pytest.fixture(scope="module")
def worker(server: PrivateRedis, api: Any, root: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess("redis-faults", root / "worker.log", worker_env(server.url, **WORKER_SETTINGS))
    try:
        w.wait_ready(api.extensions["cxr_celery"])
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def inputs(root: Path) -> Path:
    from demo.phantom_dicom import write_phantoms

    write_phantoms(root / "in", 24, seed=5151, size=128)
    return root / "in"


def _submit(api: Any, auth: dict[str, str], inp: Path, out: Path) -> tuple[str, str]:
    response = api.test_client().post(
        "/bulk_inference",
        headers=auth,
        json={"input_folder_path": str(inp), "output_folder_path": str(out), "wait": False},
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["Data"]["job_id"], response.get_json()["Data"]["status_url"]


def _recorded(url: str, job_id: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.hlen(f"cxr:job:{job_id}:files"))
    except redis.ConnectionError:
        return 0


def _wait_recorded(url: str, job_id: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _recorded(url, job_id) < count:
        assert time.monotonic() < deadline, f"job {job_id} never recorded {count} files"
        time.sleep(0.05)


def test_redis_down_the_api_answers_503_fast_and_ping_still_answers(
    server: PrivateRedis, api: Any, auth: dict[str, str], worker: WorkerProcess, inputs: Path, root: Path
) -> None:
    client = api.test_client()
    image = str(next(inputs.glob("*.dcm")))
    requests = [
        ("get", "/health", None),
        ("get", "/jobs/0123456789abcdef", None),
        ("post", "/bulk_inference", {"input_folder_path": str(inputs), "output_folder_path": str(root / "o")}),
        ("post", "/single_inference", {"input_image_path": image, "output_folder_path": str(root / "o")}),
    ]
    server.stop()
    try:
        for method, url, body in requests:
            started = time.monotonic()
            response = getattr(client, method)(url, headers=auth, json=body)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, (url, response.get_json())
            assert response.get_json() == {"Result": "Failure", "Data": None, "Message": BROKER_DOWN}
            assert elapsed < 5.0, f"{url} took {elapsed:.1f} s with Redis down"
            log.info("Redis down: %s %s answered 503 in %.3f s", method.upper(), url, elapsed)
        started = time.monotonic()
        assert client.get("/ping").get_json() == {"status": "ok"}
        assert time.monotonic() - started < 1.0
    finally:
        server.start()
    # Back up: the API and the idle worker reconnect by themselves, a job runs to the end.
    assert client.get("/jobs/0123456789abcdef", headers=auth).status_code == 404
    job_id, status_url = _submit(api, auth, inputs, root / "after-outage")
    summary = wait_for_job(client, auth, status_url, timeout=120)["Data"]
    assert summary["status"] == "completed" and summary["processed"] == 24
    assert_published_once(root / "after-outage", summary, sorted(inputs.glob("*.dcm")), job_id)


def test_redis_restarted_mid_job_with_its_data_the_job_ends_with_every_file_accounted_for(
    server: PrivateRedis, api: Any, auth: dict[str, str], worker: WorkerProcess, inputs: Path, root: Path
) -> None:
    out = root / "restart-aof"
    job_id, status_url = _submit(api, auth, inputs, out)
    _wait_recorded(server.url, job_id, 5)
    server.stop()  # SIGKILL; the append-only file (fsync always) keeps every write
    time.sleep(1.0)
    server.start()
    summary = wait_for_job(api.test_client(), auth, status_url, timeout=120)["Data"]
    # kombu takes a message with BRPOP and records it as unacknowledged only once the
    # reply arrived (kombu #305, #1733): a kill at that instant loses the one message
    # being delivered (concurrency 1 here). The watchdog must then name it.
    lost = [s for s in summary["skipped"] if s["reason"] == "lost"]
    assert len(lost) == len(summary["skipped"]) <= 1, summary
    assert summary["status"] == ("failed" if lost else "completed"), summary
    assert summary["processed"] + len(lost) == 24
    log.info("Redis restarted mid-job with AOF: %d processed, %d lost", summary["processed"], len(lost))
    assert_published_once(out, summary, sorted(inputs.glob("*.dcm")), job_id)


def test_redis_restarted_mid_job_without_its_data_the_job_is_not_found(
    server: PrivateRedis, api: Any, auth: dict[str, str], worker: WorkerProcess, inputs: Path, root: Path
) -> None:
    """Everything in Redis is lost: the job record too. The answer is 404 (never a job
    "running" forever), files in flight leave no half record behind, and the worker
    takes the next job."""
    job_id, status_url = _submit(api, auth, inputs, root / "restart-empty")
    _wait_recorded(server.url, job_id, 3)
    server.stop()
    shutil.rmtree(server.dir / "appendonlydir")
    server.start()
    client = api.test_client()
    response = client.get(status_url, headers=auth)
    assert response.status_code == 404
    assert response.get_json()["Message"] == f"Job not found: {job_id}"
    time.sleep(2.0)  # a file that was running when Redis went away has finished by now
    assert redis.Redis.from_url(server.url).keys(f"cxr:job:{job_id}*") == []
    assert client.get(status_url, headers=auth).status_code == 404
    next_job, next_url = _submit(api, auth, inputs, root / "after-empty")
    summary = wait_for_job(client, auth, next_url, timeout=120)["Data"]
    assert summary["status"] == "completed" and summary["processed"] == 24
    assert summary["job_id"] == next_job


def test_lost_messages_make_the_job_fail_with_the_lost_files_named(
    server: PrivateRedis, api: Any, auth: dict[str, str], worker: WorkerProcess, inputs: Path, root: Path
) -> None:
    """The inference queue is deleted mid-job (the messages are lost, Redis keeps running):
    the watchdog finds the job without progress and without messages, and fails it with
    every unprocessed file skipped as ``lost``."""
    out = root / "lost"
    job_id, status_url = _submit(api, auth, inputs, out)
    _wait_recorded(server.url, job_id, 3)
    redis.Redis.from_url(server.url).delete("inference")
    deleted = time.monotonic()
    body = wait_for_job(api.test_client(), auth, status_url, timeout=60)
    detected_s = time.monotonic() - deleted
    log.info("lost messages: job failed %.1f s after its queue was deleted", detected_s)
    summary = body["Data"]
    assert body["Message"] == "Job failed."
    assert summary["status"] == "failed"
    assert summary["failure"].startswith("messages of this job were lost by the broker")
    lost = [s for s in summary["skipped"] if s["reason"] == "lost"]
    assert lost and len(lost) == len(summary["skipped"])
    assert all("no longer in Redis" in s["detail"] for s in lost)
    assert summary["processed"] >= 3 and summary["processed"] + len(lost) == 24
    assert_published_once(out, summary, sorted(inputs.glob("*.dcm")), job_id)
    # grace 3 s + two sweeps 1 s apart, plus the files still running; generous for a busy machine
    assert detected_s < 30, detected_s


def test_a_job_whose_tasks_cannot_be_sent_is_failed_at_once(inputs: Path, root: Path) -> None:
    """The job record is written, then sending the chord fails (the broker is another,
    unreachable server here): 503, and the record says failed, not running."""
    from api import create_app
    from api.auth import issue_token
    from cxr.stack import free_port
    from engine.jobstore import JobStore
    from workers.app import create_celery_app

    url = redis_db_url("faults_redis")
    store = JobStore.from_url(url)
    store.client.flushdb()
    try:
        app = create_app({"REDIS_URL": url, "CXR_JWT_SECRET": SECRET, "CXR_DATA_ROOTS": str(root)})
        unreachable = create_celery_app(f"redis://127.0.0.1:{free_port()}/0")
        unreachable.conf.update(broker_connection_timeout=1.0, broker_connection_max_retries=1)
        app.extensions["cxr_celery"] = unreachable
        started = time.monotonic()
        response = app.test_client().post(
            "/bulk_inference",
            headers={"Authorization": issue_token(app, "x")},
            json={"input_folder_path": str(inputs), "output_folder_path": str(root / "unsent")},
        )
        assert time.monotonic() - started < 10
        assert response.status_code == 503
        assert response.get_json()["Message"] == BROKER_DOWN
        [job_id] = [k.split(":")[2] for k in store.client.keys("cxr:job:*")]
        progress = store.progress(job_id)
        assert progress is not None and progress.status == "failed"
        assert progress.summary is not None
        assert progress.summary["failure"].startswith("the job's tasks could not be sent")
        assert progress.summary["total"] == 24 and progress.summary["processed"] == 0
        assert {s["reason"] for s in progress.summary["skipped"]} == {"lost"}
        assert len(progress.summary["skipped"]) == 24
        assert store.active_jobs() == []
    finally:
        store.client.flushdb()
