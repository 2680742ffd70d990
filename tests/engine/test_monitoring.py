"""engine/monitoring.py: the scrape-time gauges read real Redis (database ``engine``), and
a Redis outage gives ``cxr_state_up 0`` instead of a failed scrape; file records become
processed/skipped counters and stage histograms; the metrics port setting."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry

from engine import monitoring
from engine.jobstore import JobStore
from tests.support.service import redis_db_url


@pytest.fixture()
def store() -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_db_url("engine"), decode_responses=True)
    client.flushdb()
    yield JobStore(client)
    client.flushdb()
    client.close()


def gauges(collector: monitoring.StateCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {(s.name, tuple(s.labels.values())): s.value for m in registry.collect() for s in m.samples}


def test_queue_depth_running_jobs_and_the_oldest_age_are_read_at_scrape_time(store: JobStore) -> None:
    common = {"input_path": "/in", "output_path": "/out", "layout": "patient"}
    store.create("old", paths=["/in/a.dcm", "/in/b.dcm"], **common)
    store.create("new", paths=["/in/c.dcm"], **common)
    store.create("waiting", paths=["/in/d.dcm"], **common)
    store.record_file("old", 0, {"path": "/in/a.dcm", "status": "processed"})
    store.client.hset("cxr:job:old", "started_at", f"{time.time() - 120:.3f}")
    store.record_file("new", 0, {"path": "/in/c.dcm", "status": "processed"})  # one file: still "running"
    store.client.rpush("inference", "m1", "m2", "m3")
    collector = monitoring.StateCollector(store, ["inference", "celery"])

    first = gauges(collector)
    assert first[("cxr_state_up", ())] == 1
    assert first[("cxr_queue_depth", ("inference",))] == 3 and first[("cxr_queue_depth", ("celery",))] == 0
    assert first[("cxr_jobs_active", ("running",))] == 2 and first[("cxr_jobs_active", ("queued",))] == 1
    assert 119 <= first[("cxr_oldest_running_job_age_seconds", ())] < 180

    store.finish("old", {"status": "completed", "job_id": "old"})
    store.client.delete("inference")
    second = gauges(collector)  # read again: nothing cached
    assert second[("cxr_queue_depth", ("inference",))] == 0
    assert second[("cxr_jobs_active", ("running",))] == 1
    assert second[("cxr_oldest_running_job_age_seconds", ())] < 100


def test_redis_down_is_a_gauge_not_a_failed_scrape() -> None:
    dead = JobStore.from_url("redis://127.0.0.1:1/0", retries=0, socket_connect_timeout=0.2)
    assert gauges(monitoring.StateCollector(dead, ["inference"])) == {("cxr_state_up", ()): 0}


def test_file_records_become_counters_and_stage_histograms() -> None:
    def get(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        get("cxr_files_processed_total", kind="bulk"),
        get("cxr_files_skipped_total", kind="bulk", reason="decode_error"),
        get("cxr_stage_duration_seconds_count", stage="read_decode"),
        get("cxr_stage_duration_seconds_sum", stage="read_decode"),
        get("cxr_jobs_finished_total", status="failed"),
    )
    monitoring.file_done({"status": "processed", "timings_ms": {"read_decode": 250.0, "total": 900.0}}, "bulk")
    monitoring.file_done({"status": "skipped", "reason": "decode_error"}, "bulk")
    monitoring.job_finished("failed")
    after = (
        get("cxr_files_processed_total", kind="bulk"),
        get("cxr_files_skipped_total", kind="bulk", reason="decode_error"),
        get("cxr_stage_duration_seconds_count", stage="read_decode"),
        get("cxr_stage_duration_seconds_sum", stage="read_decode"),
        get("cxr_jobs_finished_total", status="failed"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == pytest.approx([1, 1, 1, 0.25, 1])


def test_metrics_port_setting() -> None:
    assert monitoring.metrics_port({}) is None and monitoring.metrics_port({"CXR_METRICS_PORT": " "}) is None
    assert monitoring.metrics_port({"CXR_METRICS_PORT": "9108"}) == 9108
    for bad in ("0", "70000", "http"):
        with pytest.raises(ValueError, match="CXR_METRICS_PORT"):
            monitoring.metrics_port({"CXR_METRICS_PORT": bad})
    assert monitoring.metrics_host({}) == "127.0.0.1"
