"""Prometheus metrics (prometheus-client): what the engine counts, and how each process kind serves it.

Hospital IT runs servers under Prometheus and Grafana; Flower shows tasks, not the
engine. Every process kind that has a ``CXR_METRICS_PORT`` serves ``/metrics`` on it,
bound to ``CXR_METRICS_HOST`` (default 127.0.0.1: **do not expose**; the metrics name
jobs' volumes and refusal reasons, and the exporter has no authentication). Unset, no
port is opened (the counters still count, in memory, at no measurable cost).

* The API (gunicorn, ``api/gunicorn_conf.py``): the master serves what every gunicorn
  process counted, plus gauges read from Redis at scrape time (:class:`StateCollector`:
  queue depth per queue, jobs queued and running, the oldest running job's age).
* A worker (``celery worker``, ``workers.app``): the main process serves what every
  prefork child counted.

Several processes, one answer: prometheus-client's multiprocess mode. Before the first
fork, the parent (:func:`prepare_multiprocess`) points ``PROMETHEUS_MULTIPROC_DIR`` at
a folder of its own: the operator's, wiped of old ``*.db`` files (one folder per process
kind: two kinds in one folder would serve each other's numbers), else a fresh temporary
one removed when the parent exits. Each process writes its values to its own files
there; the exporter sums them. Every metric has labels, so no value exists before
the folder is set (prometheus-client chooses file or memory storage when a value is made).

What never goes into a label: paths, patient ids, job ids, task ids, anything from a
request body (unbounded, and some of it identifies patients). Labels are route
templates, statuses, reason codes, stage names, queue names and the model's identity.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

PORT_ENV = "CXR_METRICS_PORT"
HOST_ENV = "CXR_METRICS_HOST"
DEFAULT_HOST = "127.0.0.1"

#: Per-stage buckets (seconds): a decode takes milliseconds, a 2k PDF a second, a GPU forward pass ~10 ms.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# -- The API ---------------------------------------------------------------------------
API_REQUESTS = Counter(
    "cxr_api_requests", "API answers by route template, method and status", ["route", "method", "status"]
)
API_LATENCY = Histogram(
    "cxr_api_request_duration_seconds", "API request latency", ["route", "method"], buckets=REQUEST_BUCKETS
)
API_AUTH_REFUSED = Counter("cxr_api_auth_refused", "401 and 429 answers, by status and message", ["status", "message"])
JOBS_SUBMITTED = Counter("cxr_jobs_submitted", "Bulk jobs created by the API", ["layout"])
FILES_REFUSED = Counter(
    "cxr_discovery_refused_files", "Files the API refused while listing a bulk job's folder, by reason", ["reason"]
)
# -- Jobs, wherever they finish (the chord callback, the API, the watchdog) -----------
JOBS_FINISHED = Counter("cxr_jobs_finished", "Bulk jobs finished, by final status", ["status"])
# -- Workers --------------------------------------------------------------------------
FILES_PROCESSED = Counter("cxr_files_processed", "Files with published (or returned) outputs", ["kind"])
FILES_SKIPPED = Counter("cxr_files_skipped", "Files not processed, by skip reason", ["kind", "reason"])
STAGE_SECONDS = Histogram(
    "cxr_stage_duration_seconds",
    "Per-file stage time (engine/pipeline.py timings_ms: read_decode, preprocess, forward_gradcam, "
    "source_png, heatmap_png, report_pdf, predictions_json, publish, total)",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
DECODE_SECONDS = Histogram(
    "cxr_decode_duration_seconds",
    "Per-file read and decode time (the read_decode stage) by transfer syntax (pydicom's name for it)",
    ["transfer_syntax"],
    buckets=STAGE_BUCKETS,
)
DELIVERIES = Counter(
    "cxr_file_deliveries",
    "Bulk file task deliveries by decision (process, process_after_death, recorded, ignore, give_up)",
    ["action"],
)
MODEL_LOAD = Histogram(
    "cxr_model_load_seconds",
    "Model load and warm-up time per worker process",
    ["model"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
MODEL_INFO = Gauge(
    "cxr_model_info",
    "The model the workers run (value 1): name, version, weights digest, operating point (digest of the thresholds)",
    ["name", "version", "weights_sha256", "operating_point", "demo"],
    multiprocess_mode="max",
)
MODEL_THRESHOLD = Gauge(
    "cxr_model_threshold",
    "The operating point: each finding's decision threshold",
    ["finding"],
    multiprocess_mode="max",
)


def metrics_port(environ: Mapping[str, str] | None = None) -> int | None:
    """``CXR_METRICS_PORT`` as a port number; None when unset or empty (no exporter)."""
    raw = (os.environ if environ is None else environ).get(PORT_ENV, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(f"{PORT_ENV}={raw!r} is not a port number")
    return port


def metrics_host(environ: Mapping[str, str] | None = None) -> str:
    return (os.environ if environ is None else environ).get(HOST_ENV, "").strip() or DEFAULT_HOST


def prepare_multiprocess(kind: str) -> Path | None:
    """In a parent, before it forks: the folder each process of this kind writes its values to.

    Only when this process serves metrics (``CXR_METRICS_PORT``). Returns the folder.
    """
    if metrics_port() is None:
        return None
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # an earlier run's numbers are not this run's
            stale.unlink()
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"cxr-metrics-{kind}-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        atexit.register(_remove_folder, folder, os.getpid())
    values.ValueClass = values.get_value_class()  # file-backed values from here on
    return folder


def _remove_folder(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # forked children inherit atexit handlers: only the parent removes it
        shutil.rmtree(folder, ignore_errors=True)


def serve(kind: str, collectors: Iterable[Any] = ()) -> int | None:
    """Start the ``/metrics`` exporter of this process kind (a daemon thread); its port, or None.

    A port that cannot be bound is logged as an error and the process carries on: losing
    the metrics must not take the API or a worker down.
    """
    port = metrics_port()
    if port is None:
        return None
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    for collector in collectors:
        registry.register(collector)
    host = metrics_host()
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("%s metrics: cannot listen on %s:%d (%s); no metrics from this process", kind, host, port, exc)
        return None
    log.info("%s metrics on http://%s:%d/metrics (do not expose)", kind, host, port)
    return port


def process_exited(pid: int) -> None:
    """A child is gone (gunicorn's ``child_exit``): its live gauges stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# -- What the code calls --------------------------------------------------------------
def file_done(record: Mapping[str, Any], kind: str) -> None:
    """One file's outcome (a pipeline record): processed or skipped by reason, and its stage times."""
    if record.get("status") == "processed":
        FILES_PROCESSED.labels(kind).inc()
    else:
        FILES_SKIPPED.labels(kind, str(record.get("reason") or "unknown")).inc()
    timings = record.get("timings_ms") or {}
    for stage, ms in timings.items():
        if isinstance(ms, int | float):
            STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
    # Only a decoded file has a transfer syntax, and only one pydicom could decode: a bounded label.
    if record.get("transfer_syntax") and isinstance(timings.get("read_decode"), int | float):
        DECODE_SECONDS.labels(str(record["transfer_syntax"])).observe(timings["read_decode"] / 1000.0)


def delivery(action: str, deaths: int) -> None:
    DELIVERIES.labels("process_after_death" if action == "process" and deaths else action).inc()


def model_loaded(identity: Mapping[str, Any], thresholds: Mapping[str, float], seconds: float) -> None:
    name = str(identity.get("name"))
    MODEL_LOAD.labels(name).observe(seconds)
    point = hashlib.sha256(json.dumps(dict(thresholds), sort_keys=True).encode()).hexdigest()[:12]
    MODEL_INFO.labels(
        name,
        str(identity.get("version")),
        str(identity.get("weights_sha256", ""))[:12],
        point,
        str(bool(identity.get("demo"))).lower(),
    ).set(1)
    for finding, threshold in thresholds.items():
        MODEL_THRESHOLD.labels(finding).set(float(threshold))


def job_submitted(layout: str, refused: Sequence[Mapping[str, Any]]) -> None:
    JOBS_SUBMITTED.labels(layout).inc()
    for record in refused:
        FILES_REFUSED.labels(str(record.get("reason") or "unknown")).inc()


def job_finished(status: str) -> None:
    JOBS_FINISHED.labels(status).inc()


def request_done(route: str, method: str, status: int, seconds: float, message: str | None = None) -> None:
    API_REQUESTS.labels(route, method, str(status)).inc()
    API_LATENCY.labels(route, method).observe(seconds)
    if status in (401, 429):
        API_AUTH_REFUSED.labels(str(status), message or "").inc()


class StateCollector:
    """Gauges read from Redis when Prometheus scrapes (never stale, nothing to keep up to date).

    ``store`` is a :class:`engine.jobstore.JobStore`; ``queues`` the Celery queue names.
    Redis unreachable: only ``cxr_state_up 0`` (the scrape itself still succeeds).
    """

    def __init__(self, store: Any, queues: Sequence[str]) -> None:
        self.store = store
        self.queues = list(queues)

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only; no names to check at registration

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("cxr_state_up", "1 when the scrape could read Redis")
        try:
            client = self.store.client
            depths = [(q, int(client.llen(q))) for q in self.queues]
            jobs = self.store.active_overview()
        except Exception as exc:  # noqa: BLE001 - a scrape must answer; the reason goes to the log
            log.warning("metrics: cannot read queue and job state from Redis (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("cxr_queue_depth", "Messages waiting in each Celery queue", labels=["queue"])
        for queue, n in depths:
            depth.add_metric([queue], n)
        yield depth
        active = GaugeMetricFamily("cxr_jobs_active", "Bulk jobs not finished, by status", labels=["status"])
        counts = {"queued": 0, "running": 0}
        now, oldest = time.time(), 0.0
        for job in jobs:
            counts[job["status"]] = counts.get(job["status"], 0) + 1
            if job["status"] == "running" and job.get("started_at"):
                oldest = max(oldest, now - float(job["started_at"]))
        for status, n in counts.items():
            active.add_metric([status], n)
        yield active
        yield GaugeMetricFamily(
            "cxr_oldest_running_job_age_seconds", "Seconds since the oldest running job's first file started", oldest
        )
