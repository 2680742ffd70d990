"""Broker faults: Redis down, restarted (with and without its data), full, messages lost.

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

WORKER_SETTINGS = {
    "CXR_VISIBILITY_TIMEOUT_S": "5",
    "CXR_STALL_GRACE_S": "3",
    "CXR_WATCHDOG_INTERVAL_S": "1",
}
BROKER_DOWN = "Message broker unreachable; try again later"
BROKER_FULL = "Message broker is full; try again later"
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


def test_a_full_redis_is_a_503_the_worker_lives_and_the_job_completes_once_there_is_room(
    server: PrivateRedis, api: Any, auth: dict[str, str], worker: WorkerProcess, inputs: Path, root: Path
) -> None:
    """``maxmemory`` reached with ``noeviction`` (the compose file's policy): every write is
    refused with OOM. The API answers 503 (bulk, single, /health, a bad token: it was 500),
    reads still answer, the worker's main process lives (it died with "Unrecoverable error:
    OutOfMemoryError"), and once Redis has room the job completes, every file once."""
    out = root / "full"
    job_id, status_url = _submit(api, auth, inputs, out)
    _wait_recorded(server.url, job_id, 3)
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    client = api.test_client()
    image = str(next(inputs.glob("*.dcm")))
    requests = [
        ("get", "/health", None, auth),
        ("post", "/bulk_inference", {"input_folder_path": str(inputs), "output_folder_path": str(root / "o")}, auth),
        ("post", "/single_inference", {"input_image_path": image, "save_to_disk": False}, auth),
        ("get", "/jobs/0123456789abcdef", None, {"Authorization": "not-a-token"}),
    ]
    admin.config_set("maxmemory", "1")  # far below what is used: Redis is full
    try:
        for method, url, body, headers in requests:
            response = getattr(client, method)(url, headers=headers, json=body)
            assert response.status_code == 503, (url, response.get_json())
            assert response.get_json() == {"Result": "Failure", "Data": None, "Message": BROKER_FULL}, url
        progress = client.get(status_url, headers=auth)
        assert progress.status_code == 200 and progress.get_json()["Data"]["status"] == "running"
        time.sleep(4.0)  # the worker meets the full Redis: the file in hand, its sweeps, the watchdog
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        during = _recorded(server.url, job_id)
    finally:
        admin.config_set("maxmemory", "0")
    room = time.monotonic()
    _wait_recorded(server.url, job_id, during + 1, timeout=30)  # the file that waited for room
    resumed_s = time.monotonic() - room
    summary = wait_for_job(client, auth, status_url, timeout=60)["Data"]
    finished_s = time.monotonic() - room
    log.info(
        "Redis full for 4 s at %d recorded files: next file recorded %.1f s and job completed %.1f s after room",
        during,
        resumed_s,
        finished_s,
    )
    assert summary["status"] == "completed" and summary["processed"] == 24, summary
    assert_published_once(out, summary, sorted(inputs.glob("*.dcm")), job_id)
    assert worker.proc.poll() is None
    text = worker.log.read_text()
    assert "Redis is full" in text and "Unrecoverable error" not in text
    assert resumed_s < 10, f"the worker took {resumed_s:.1f} s to resume (pauses are 2 s at most)"


def test_the_broker_transport_takes_acknowledges_and_requeues_messages_on_a_full_redis(server: PrivateRedis) -> None:
    """kombu's own Redis transport acknowledges inside MULTI/EXEC, which a full Redis refuses
    even for HDEL and ZREM: the acknowledgement raised OutOfMemoryError in the worker's main
    process. ``workers.broker``'s transport acknowledges, takes and requeues without dying."""
    from kombu import Connection, Exchange, Queue

    from workers.broker import TRANSPORT

    url = server.url.rsplit("/", 1)[0] + "/1"  # the worker of this module listens on database 0
    admin = redis.Redis.from_url(url)
    admin.flushdb()
    queue = Queue("full-test", Exchange("full-test"), "full-test")

    def publish(conn: Any, n: int) -> None:
        conn.Producer().publish({"n": n}, exchange=queue.exchange, routing_key="full-test", declare=[queue])

    try:
        with Connection(url) as stock, Connection(url, transport=TRANSPORT) as ours:
            for n in range(4):
                publish(ours, n)
            stock_queue, our_queue = queue(stock.channel()), queue(ours.channel())
            held_by_stock = stock_queue.get(no_ack=False)
            acked, requeued = our_queue.get(no_ack=False), our_queue.get(no_ack=False)
            assert admin.hlen("unacked") == 3
            admin.config_set("maxmemory", "1")
            try:
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    held_by_stock.ack()  # the cause of the worker's death
                acked.ack()
                taken_while_full = our_queue.get(no_ack=False)  # not recorded in Redis: kept in memory
                assert taken_while_full is not None and taken_while_full.payload == {"n": 3}
                taken_while_full.ack()
                requeued.reject(requeue=True)  # refused: stays unacknowledged, for the sweep
            finally:
                admin.config_set("maxmemory", "0")
            assert admin.llen("full-test") == 0
            assert sorted(admin.hkeys("unacked")) == sorted(
                [held_by_stock.delivery_tag.encode(), requeued.delivery_tag.encode()]
            )
            assert admin.zcard("unacked_index") == 2
    finally:
        admin.flushdb()
