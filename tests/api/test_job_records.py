"""Job records and the producer's result backend, against a real Redis (no worker).

Database 15 holds what these tests send; nothing consumes it, and it is flushed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import redis

from engine.jobstore import FILES_KEY, JOB_KEY, PATHS_KEY, STARTS_KEY, JobStore
from tests.support.service import redis_db_url
from workers.finalize import classify_lost_file

IDLE_DB_URL = redis_db_url("idle")


@pytest.fixture()
def store() -> Iterator[JobStore]:
    s = JobStore.from_url(IDLE_DB_URL, ttl_s=600)
    s.client.flushdb()
    yield s
    s.client.flushdb()


def _record(status: str, path: str = "/in/a.dcm") -> dict[str, Any]:
    return {"path": path, "status": status, "reason": None if status == "processed" else "decode_error"}


def test_recording_a_file_twice_counts_it_once(store: JobStore) -> None:
    store.create("j1", paths=["/in/a.dcm", "/in/b.dcm"], input_path="/in", output_path="/out", layout="patient")
    assert store.progress("j1").status == "queued"  # type: ignore[union-attr]
    assert store.record_file("j1", 0, _record("processed")) is True
    assert store.record_file("j1", 0, _record("processed")) is False  # a redelivered task
    progress = store.progress("j1")
    assert progress is not None
    assert (progress.status, progress.total, progress.processed, progress.skipped) == ("running", 2, 1, 0)
    # A redelivery that ends differently moves the file between the counters.
    store.record_file("j1", 1, _record("skipped", "/in/b.dcm"))
    store.record_file("j1", 1, _record("processed", "/in/b.dcm"))
    progress = store.progress("j1")
    assert progress is not None and (progress.processed, progress.skipped) == (2, 0)
    assert progress.as_data() == {
        "job_id": "j1",
        "status": "running",
        "total": 2,
        "processed": 2,
        "skipped_count": 0,
        "done": 2,
    }
    assert store.job_paths("j1") == ["/in/a.dcm", "/in/b.dcm"]
    assert 0 < store.client.ttl(FILES_KEY.format(job_id="j1")) <= 600


def test_finishing_keeps_the_summary_and_drops_the_scratch_keys(store: JobStore) -> None:
    store.create(
        "j2", paths=[f"/in/{i}.dcm" for i in range(2500)], input_path="/in", output_path="/out", layout="instance"
    )
    assert len(store.job_paths("j2")) == 2500  # pushed in chunks
    store.record_file("j2", 0, _record("processed"))
    store.finish("j2", {"job_id": "j2", "status": "completed", "total": 2500})
    progress = store.progress("j2")
    assert progress is not None and progress.finished
    assert progress.as_data() == {"job_id": "j2", "status": "completed", "total": 2500}
    assert not store.client.exists(FILES_KEY.format(job_id="j2"), PATHS_KEY.format(job_id="j2"))
    assert 0 < store.client.ttl(JOB_KEY.format(job_id="j2")) <= 600
    assert store.progress("unknown") is None


@pytest.mark.parametrize(
    ("outcome", "reason", "detail"),
    [
        (("FAILURE", "TimeLimitExceeded"), "timeout", "hard time limit of 300 s exceeded"),
        (("FAILURE", "WorkerLostError"), "inference_error", "the worker process died"),
        (("FAILURE", "ConnectionError"), "inference_error", "the file's task failed (ConnectionError)"),
        (None, "inference_error", "the file's task left no result"),
    ],
)
def test_a_file_whose_task_died_is_still_accounted_for(outcome: Any, reason: str, detail: str) -> None:
    record = classify_lost_file("/in/x.dcm", outcome, 300.0)
    assert (record["path"], record["status"], record["reason"]) == ("/in/x.dcm", "skipped", reason)
    assert record["detail"].startswith(detail)


def test_the_producer_holds_no_result_subscriptions() -> None:
    """Sending a 300-file chord leaves the sender with no pub/sub channel (API memory stays
    flat however large the job), and ``AsyncResult.get`` still works, by polling."""
    from celery.result import AsyncResult

    from workers.app import create_celery_app
    from workers.canvas import send_bulk_job

    app = create_celery_app(IDLE_DB_URL)
    client = redis.Redis.from_url(IDLE_DB_URL)
    client.flushdb()
    try:
        job_id = uuid.uuid4().hex
        send_bulk_job(app, job_id, [f"/in/{i}.dcm" for i in range(300)], "/out", "patient")
        assert client.llen("inference") == 300
        consumer = app.backend.result_consumer
        assert consumer._pubsub is None and not consumer.subscribed_to
        [size_key] = client.keys("celery-taskset-meta-*.s")
        assert client.get(size_key) == b"300"  # the chord counts 300 parts
        assert client.exists(f"celery-task-meta-{job_id}-0") == 0  # nothing ran: no worker on this database
        app.backend.store_result("t-1", {"ok": True}, "SUCCESS")
        assert AsyncResult("t-1", app=app).get(timeout=5, interval=0.05) == {"ok": True}
        assert consumer._pubsub is None
    finally:
        client.flushdb()


def test_begin_file_counts_starts_and_says_when_not_to_process(store: JobStore) -> None:
    store.create("j3", paths=["/in/a.dcm", "/in/b.dcm"], input_path="/in", output_path="/out", layout="patient")
    assert [store.begin_file("j3", 0).starts for _ in range(3)] == [1, 2, 3]  # three deliveries of file 0
    assert store.begin_file("j3", 0).state == "start"
    store.record_file("j3", 0, _record("processed"))
    again = store.begin_file("j3", 0)
    assert (again.state, again.record) == ("recorded", _record("processed"))
    assert store.begin_file("unknown", 0).state == "gone"
    store.finish("j3", {"job_id": "j3", "status": "completed", "total": 2})
    assert store.begin_file("j3", 1).state == "finished"
    assert not store.client.exists(STARTS_KEY.format(job_id="j3"))
    assert store.active_jobs() == []


def test_a_finished_or_vanished_job_takes_no_more_file_records(store: JobStore) -> None:
    """A late or duplicate task can neither reopen a finished job nor recreate a lost one."""
    store.create("j4", paths=["/in/a.dcm"], input_path="/in", output_path="/out", layout="patient")
    assert store.active_jobs() == ["j4"]
    store.finish("j4", {"job_id": "j4", "status": "failed", "total": 1})
    assert store.record_file("j4", 0, _record("processed")) is None
    progress = store.progress("j4")
    assert progress is not None and (progress.status, progress.processed) == ("failed", 0)
    assert store.record_file("gone", 0, _record("processed")) is None
    assert store.client.keys("cxr:job:gone*") == []


def test_a_job_is_shown_to_its_owner_and_to_admins_only(tmp_path: Any) -> None:
    """Any valid token used to read any job by id. A job now records the subject of the
    token that sent it; another subject gets the 404 of an unknown id (same message: the
    answer does not tell that the job exists), an admin token (``--admin``) reads it."""
    from api import create_app
    from api.auth import ADMIN_CLAIM, issue_token
    from demo.phantom_dicom import write_phantoms
    from tests.support.service import SECRET

    write_phantoms(tmp_path / "in", 2, seed=31, size=64)
    app = create_app({"REDIS_URL": IDLE_DB_URL, "CXR_JWT_SECRET": SECRET, "CXR_DATA_ROOTS": str(tmp_path)})
    client = redis.Redis.from_url(IDLE_DB_URL)
    client.flushdb()
    try:
        owner, other = issue_token(app, "ris-a"), issue_token(app, "ris-b")
        admin = issue_token(app, "ops", admin=True)
        assert jwt.decode(admin, SECRET, algorithms=["HS256"])[ADMIN_CLAIM] is True
        assert ADMIN_CLAIM not in jwt.decode(owner, SECRET, algorithms=["HS256"])
        api = app.test_client()
        sent = api.post(
            "/bulk_inference",
            headers={"Authorization": owner},
            json={
                "input_folder_path": str(tmp_path / "in"),
                "output_folder_path": str(tmp_path / "out"),
                "wait": False,
            },
        )
        assert sent.status_code == 202, sent.get_json()
        job_id, status_url = sent.get_json()["Data"]["job_id"], sent.get_json()["Data"]["status_url"]
        assert client.hget(JOB_KEY.format(job_id=job_id), "owner") == b"ris-a"

        def answer(token: str, url: str = status_url) -> tuple[int, Any]:
            response = api.get(url, headers={"Authorization": token})
            return response.status_code, response.get_json()

        assert answer(owner)[0] == 200 and answer(owner)[1]["Data"]["job_id"] == job_id
        assert answer(admin)[0] == 200
        refused, unknown = answer(other), answer(other, "/jobs/" + "0" * 32)
        assert refused == (404, {"Result": "Failure", "Data": None, "Message": f"Job not found: {job_id}"})
        assert unknown[0] == 404 and unknown[1]["Message"] == "Job not found: " + "0" * 32
        # A record without an owner (written by an older API): admins only.
        client.hdel(JOB_KEY.format(job_id=job_id), "owner")
        assert answer(owner)[0] == 404 and answer(admin)[0] == 200
    finally:
        client.flushdb()
