"""The delivery decision (``engine.delivery``) against a real Redis, without killing anything.

Each call stands for one delivery of a file's task message; the kill tests in
``tests/workers/test_faults_workers.py`` check the same rule with real dying processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from engine.delivery import decide_delivery
from engine.jobstore import JobStore
from engine.settings import WorkerSettings
from tests.support.service import redis_db_url


@pytest.fixture()
def store() -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_db_url("engine"), decode_responses=True)
    client.flushdb()
    yield JobStore(client, ttl_s=60)
    client.flushdb()


def new_job(store: JobStore, job_id: str = "j1", files: int = 2) -> str:
    store.create(
        job_id, paths=[f"/in/{i}.dcm" for i in range(files)], input_path="/in", output_path="/out", layout="patient"
    )
    return job_id


def test_first_delivery_processes(store: JobStore) -> None:
    job = new_job(store)
    d = decide_delivery(store, job, 0, path="/in/0.dcm", retries=0, max_deliveries=3)
    assert (d.action, d.deaths) == ("process", 0)


def test_each_unrecorded_redelivery_is_one_death_until_the_cap(store: JobStore) -> None:
    job = new_job(store)
    actions = [decide_delivery(store, job, 0, path="/in/0.dcm", retries=0, max_deliveries=2) for _ in range(4)]
    assert [(d.action, d.deaths) for d in actions] == [("process", 0), ("process", 1), ("give_up", 2), ("recorded", 0)]
    record = store.file_records(job)[0]
    assert record["reason"] == "worker_lost" and "died 2 times" in record["detail"]
    assert store.progress(job).skipped == 1  # type: ignore[union-attr]


def test_retries_after_a_redis_error_are_not_deaths(store: JobStore) -> None:
    job = new_job(store)
    for retries in range(3):  # the same task retried by itself three times
        d = decide_delivery(store, job, 1, path="/in/1.dcm", retries=retries, max_deliveries=1)
        assert (d.action, d.deaths) == ("process", 0)


def test_a_recorded_file_is_not_processed_again(store: JobStore) -> None:
    job = new_job(store)
    store.record_file(job, 0, {"path": "/in/0.dcm", "status": "processed"})
    d = decide_delivery(store, job, 0, path="/in/0.dcm", retries=0, max_deliveries=3)
    assert d.action == "recorded" and d.record == {"path": "/in/0.dcm", "status": "processed"}


@pytest.mark.parametrize("finish", [True, False])
def test_a_finished_or_unknown_job_is_ignored(store: JobStore, finish: bool) -> None:
    job = new_job(store) if finish else "never-created"
    if finish:
        store.fail(job, "test")
    d = decide_delivery(store, job, 0, path="/in/0.dcm", retries=0, max_deliveries=3)
    assert (d.action, d.job_state) == ("ignore", "finished" if finish else "gone")
    assert store.file_records(job) == {}


def test_failed_job_summary_has_the_shape_of_every_other_summary(store: JobStore) -> None:
    job = new_job(store, files=2)
    store.record_file(
        job, 1, {"path": "/in/1.dcm", "status": "skipped", "reason": "unreadable_dicom", "detail": "empty file"}
    )
    store.fail(job, "broker down")
    summary = store.progress(job).summary  # type: ignore[union-attr]
    assert summary is not None
    assert summary["status"] == "failed" and summary["failure"] == "broker down"
    assert summary["skipped"] == [
        {"path": "/in/0.dcm", "reason": "lost", "detail": "broker down"},
        {"path": "/in/1.dcm", "reason": "unreadable_dicom", "detail": "empty file"},
    ]
    assert set(summary) >= {
        "job_id",
        "total",
        "processed",
        "superseded",
        "outputs",
        "timings",
        "workers",
        "summary_file",
    }


def test_worker_settings_from_a_mapping() -> None:
    assert WorkerSettings.from_env({}) == WorkerSettings(3, 120.0, 30.0)
    assert WorkerSettings.from_env(
        {"CXR_MAX_DELIVERIES": "0", "CXR_STALL_GRACE_S": "5", "CXR_WATCHDOG_INTERVAL_S": " 1.5 "}
    ) == WorkerSettings(1, 5.0, 1.5)
    with pytest.raises(ValueError, match="CXR_STALL_GRACE_S must be a number"):
        WorkerSettings.from_env({"CXR_STALL_GRACE_S": "soon"})
