"""Single inference is served before queued bulk files (issue 15, item 8).

Single-image tasks have their own queue (``single``), and every worker serves its
queues in a fixed order (``workers.app.QueueOrder``): ``single``, then ``celery`` (the
chord callbacks), then ``inference`` (bulk files), whatever the order of ``-Q``. Before,
single tasks shared the ``inference`` queue with bulk files and waited behind all of
them (7.8 s behind a 120-file job, 0.08 s idle).

Checked twice: on real Redis with a kombu consumer of the project's Celery app (the
BRPOP order itself, no worker), and end to end with the session's one worker process
(concurrency 1): a single inference sent while a bulk job's files are queued is answered
before the job's queued files are processed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.utils.scheduling import cycle_by_name

import celeryconfig
from tests.support.service import redis_db_url
from workers.app import QueueOrder

BULK_FILES = 16


def test_the_queue_order_ignores_the_order_of_q() -> None:
    strategy = cycle_by_name(celeryconfig.broker_transport_options["queue_order_strategy"])
    assert strategy is QueueOrder
    cycle = QueueOrder()
    cycle.update(["inference", "other", "celery", "single"])
    assert cycle.consume(4) == ["single", "celery", "inference", "other"]
    cycle.rotate("single")  # serving a queue never moves it back (no round robin)
    assert cycle.consume(4) == ["single", "celery", "inference", "other"]


def test_a_consumer_takes_single_then_callbacks_then_bulk_files() -> None:
    """kombu's Redis transport with the project's transport options, on real Redis: with
    messages waiting on all three queues, consumed in ``-Q`` order inference,celery,single."""
    url = redis_db_url("queue_order")
    raw = redis.Redis.from_url(url)
    raw.flushdb()
    got: list[str] = []
    try:
        with Connection(url, transport_options=celeryconfig.broker_transport_options) as conn:
            exchange = Exchange("cxr-order-test", type="direct")
            queues = [Queue(name, exchange, routing_key=name) for name in ("inference", "celery", "single")]
            producer = Producer(conn.default_channel, exchange=exchange)
            for queue in queues:
                queue(conn.default_channel).declare()
            for i in range(3):
                for name in ("inference", "celery", "single"):
                    producer.publish({"q": name, "i": i}, routing_key=name)

            def take(body: Any, message: Any) -> None:
                got.append(f"{body['q']}{body['i']}")
                message.ack()

            with Consumer(conn, queues=queues, callbacks=[take], accept=["json"]):
                while len(got) < 9:
                    conn.drain_events(timeout=5)
    finally:
        raw.flushdb()
    assert got == ["single0", "single1", "single2", "celery0", "celery1", "celery2"] + [
        "inference0",
        "inference1",
        "inference2",
    ]


@pytest.mark.timeout(240)
def test_single_inference_overtakes_a_queued_bulk_job(
    client: Any, auth: dict[str, str], worker: Any, data_root: Path, app: Any
) -> None:
    from demo.phantom_dicom import write_phantoms

    inputs = data_root / "queue-order" / "in"
    write_phantoms(inputs, BULK_FILES, seed=808, size=256)
    image = str(min(inputs.glob("*.dcm")))
    store = app.extensions["cxr_jobs"]
    response = client.post(
        "/bulk_inference",
        headers=auth,
        json={"input_folder_path": str(inputs), "output_folder_path": str(inputs.parent / "out"), "wait": False},
    )
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["Data"]["job_id"]
    try:
        deadline = time.monotonic() + 60
        while store.progress(job_id).status == "queued":  # the worker has taken the first file
            assert time.monotonic() < deadline, "the bulk job never started"
            time.sleep(0.05)
        before = store.progress(job_id)
        started = time.monotonic()
        single = client.post("/single_inference", headers=auth, json={"input_image_path": image, "save_to_disk": False})
        latency = time.monotonic() - started
        progress = store.progress(job_id)
        meanwhile = progress.processed + progress.skipped - (before.processed + before.skipped)
        print(
            f"single inference behind a {BULK_FILES}-file job: {latency:.2f} s; job files done meanwhile: {meanwhile}"
        )
        assert single.status_code == 200, single.get_json()
        # Served after the file already running (and at most one the worker had already
        # taken), not after the queued ones: on main every file of the job was done first.
        assert not progress.finished
        assert meanwhile <= 3, (before, progress)
    finally:
        store.fail(job_id, "test over")  # the job's remaining files are dropped by the worker
        deadline = time.monotonic() + 120
        while store.client.llen("inference") and time.monotonic() < deadline:
            time.sleep(0.2)
