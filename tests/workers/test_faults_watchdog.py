"""The stalled-job watchdog's rule, one sweep at a time, against a real Redis (database 11).

The messages are real: sent by the Celery app to a database no worker consumes, so the
watchdog reads what kombu really writes. The end-to-end case (a deleted queue, a real
worker) is in ``test_faults_redis``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from engine.jobstore import JobStore
from tests.support.service import redis_db_url
from workers.canvas import header_task_id, job_id_of_task
from workers.watchdog import UNACKED_KEY, jobs_with_messages, sweep

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

WATCHDOG_DB_URL = redis_db_url("watchdog")
QUEUES = ("inference", "celery")


@pytest.fixture()
def store() -> Iterator[JobStore]:
    s = JobStore.from_url(WATCHDOG_DB_URL, ttl_s=600)
    s.client.flushdb()
    yield s
    s.client.flushdb()


def _no_outcome(job_id: str) -> Any:
    return lambda index: None


def test_task_ids_name_their_job() -> None:
    assert job_id_of_task(header_task_id("0f1e", 12)) == "0f1e"
    assert job_id_of_task("0f1e-finalize") == "0f1e"
    assert job_id_of_task("single-0f1e") == "single"  # never an active job id, so harmless
    assert job_id_of_task("a-b-c") is None
    assert job_id_of_task("plain") is None


def test_a_job_with_a_message_queued_or_held_is_alive(store: JobStore) -> None:
    from workers.app import create_celery_app

    app = create_celery_app(WATCHDOG_DB_URL)
    app.signature("cxr.infer_file", kwargs={}, task_id=header_task_id("aaaa", 3)).apply_async()
    assert jobs_with_messages(store.client, QUEUES) == {"aaaa"}
    # What a worker holds unacknowledged: kombu keeps [payload, exchange, routing key].
    payload = json.loads(store.client.rpop("inference"))
    store.client.hset(UNACKED_KEY, "tag-1", json.dumps([payload, "inference", "inference"]))
    assert jobs_with_messages(store.client, QUEUES) == {"aaaa"}
    store.client.delete(UNACKED_KEY)
    assert jobs_with_messages(store.client, QUEUES) == set()


def test_a_stalled_job_is_failed_on_the_second_sweep_with_its_lost_files(store: JobStore, tmp_path: Any) -> None:
    from workers.app import create_celery_app

    store.create(
        "bbbb",
        paths=["/in/0.dcm", "/in/1.dcm", "/in/2.dcm"],
        input_path="/in",
        output_path=str(tmp_path),
        layout="patient",
    )
    store.record_file("bbbb", 0, {"path": "/in/0.dcm", "status": "skipped", "reason": "decode_error", "detail": "bad"})
    now = float(store.meta("bbbb")["updated_at"])
    kwargs = {"grace_s": 10.0, "interval_s": 1.0, "hard_limit_s": 300.0}
    assert sweep(store, QUEUES, _no_outcome, now=now + 5, **kwargs) == []  # within the grace period
    app = create_celery_app(WATCHDOG_DB_URL)
    app.signature("cxr.infer_file", kwargs={}, task_id=header_task_id("bbbb", 1)).apply_async()
    assert sweep(store, QUEUES, _no_outcome, now=now + 20, **kwargs) == []  # queued behind others: alive
    store.client.delete("inference")  # the messages are lost
    assert sweep(store, QUEUES, _no_outcome, now=now + 21, **kwargs) == []  # first sighting only
    assert sweep(store, QUEUES, _no_outcome, now=now + 22, **kwargs) == ["bbbb"]
    progress = store.progress("bbbb")
    assert progress is not None and progress.summary is not None
    summary = progress.summary
    assert summary["status"] == "failed"
    assert [(s["path"], s["reason"]) for s in summary["skipped"]] == [
        ("/in/0.dcm", "decode_error"),
        ("/in/1.dcm", "lost"),
        ("/in/2.dcm", "lost"),
    ]
    assert store.active_jobs() == []
    assert (tmp_path / ".jobs" / "bbbb.json").is_file()
    assert sweep(store, QUEUES, _no_outcome, now=now + 30, **kwargs) == []  # finished: left alone
