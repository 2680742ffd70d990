"""Celery tasks: the only place where the inference core meets Celery.

Like a web view, each task unpacks its arguments, calls plain functions
(``engine.pipeline``, ``workers.finalize``) and handles retries; nothing more.

* ``cxr.infer_file`` (queue ``inference``): one file of a bulk job. It never raises for
  a file problem: a refused or failed file becomes a skip record, so the chord callback
  always runs. Its soft time limit becomes a ``timeout`` skip. Only a transient Redis
  failure (recording the result) raises, and is retried with exponential backoff.
  What to do with a delivery is decided by ``engine.delivery.decide_delivery`` (a plain
  function of the job store): a file recorded by an earlier delivery is not processed
  again; a file of a finished or unknown job is not processed at all; and a file whose
  worker process died ``CXR_MAX_DELIVERIES`` times while processing it (the message
  comes back each time, ``task_reject_on_worker_lost``) is skipped as ``worker_lost``.
* ``cxr.infer_single`` (queue ``inference``): ``POST /single_inference``.
* ``cxr.finalize_job`` (default queue): the chord callback; writes the job summary.
* ``cxr.chord_failed``: the callback's error hook, called once every file's task has
  ended, when one of them ended without reporting (hard time limit); it finalises the
  job anyway. A killed process no longer ends a task (its message is redelivered).

The worker's main process also runs the stalled-job watchdog (``workers.watchdog``).

The model is loaded once per worker *process*, after the fork (``worker_process_init``),
never in the parent: CUDA state does not survive a fork. The parent only checks the
bundle's manifest and weights checksum at start-up (no TensorFlow), so a worker with a
bad bundle refuses to start instead of failing every file.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import redis
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult

import celeryconfig
from engine import monitoring
from engine.delivery import decide_delivery
from engine.jobstore import JobStore
from engine.pipeline import analyse_file, process_file
from engine.settings import WorkerSettings
from inference.bundle import read_bundle
from inference.dicom_read import ReadOptions
from inference.errors import CxrError, register_interrupt
from inference.predict import Predictor, configure_tensorflow
from reports.pdf_fonts import prepare_fonts
from workers import gpu
from workers.app import worker_app
from workers.canvas import header_task_id
from workers.finalize import TaskOutcome, finalize_job
from workers.single import notify_done
from workers.watchdog import Watchdog

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # fpdf2's font subsetting chatters at INFO

app = worker_app()
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
register_interrupt(SoftTimeLimitExceeded)  # a slow file is a timeout, not a decode error
_lock = threading.Lock()
_state: dict[str, Any] = {}


def predictor() -> Predictor:
    """This process's model (loaded on first use if ``worker_process_init`` did not)."""
    with _lock:
        if "predictor" not in _state:
            started = time.perf_counter()
            configure_tensorflow()
            p = Predictor(read_bundle())
            p.analyse_batch(p.preprocess(_warmup_image())[None])  # trace the graph now, not on a file
            prepare_fonts()  # and cut the report fonts: neither counts against a file's time limit
            _state["predictor"] = p
            monitoring.model_loaded(p.bundle.identity(), p.bundle.thresholds, time.perf_counter() - started)
            log.info("model %s loaded in process %d", p.bundle.identity().get("name"), os.getpid())
        return _state["predictor"]


def read_options() -> ReadOptions:
    if "options" not in _state:
        _state["options"] = ReadOptions.from_env()
    return _state["options"]


def job_store() -> JobStore:
    if "store" not in _state:
        _state["store"] = JobStore.from_url(app.conf.broker_url, retries=5)
    return _state["store"]


def settings() -> WorkerSettings:
    """The engine's worker knobs, read from the environment once per process."""
    if "settings" not in _state:
        _state["settings"] = WorkerSettings.from_env()
    return _state["settings"]


def _warmup_image() -> Any:
    import numpy as np

    return np.zeros((256, 256), dtype=np.float32)


@signals.worker_init.connect
def _prepare_worker(sender: Any = None, **_: Any) -> None:
    """Main process, before the fork: check the bundle, share the cores among children."""
    bundle = read_bundle()  # raises BundleError: the worker refuses to start
    log.info("model bundle %s verified", bundle.identity())
    log.info("worker settings: %s", settings())  # read now, before the fork, and inherited
    concurrency = int(getattr(sender, "concurrency", 0) or 1)
    if not os.environ.get("CXR_TF_THREADS", "").strip():
        # N children each sizing TensorFlow to every core would oversubscribe the CPU.
        threads = max(1, len(os.sched_getaffinity(0)) // concurrency)
        os.environ["CXR_TF_THREADS"] = str(threads)
    log.info("%d worker processes, %s TensorFlow threads each", concurrency, os.environ["CXR_TF_THREADS"])
    if celeryconfig.visibility_timeout < celeryconfig.SAFE_VISIBILITY_TIMEOUT_S:
        log.warning(
            "CXR_VISIBILITY_TIMEOUT_S=%g is below %g s (hard limit + longest retry countdown + margin): "
            "a file running longer than %g s is delivered a second time while it runs",
            celeryconfig.visibility_timeout,
            celeryconfig.SAFE_VISIBILITY_TIMEOUT_S,
            celeryconfig.visibility_timeout,
        )


@signals.worker_process_init.connect
def _load_model(**_: Any) -> None:
    gpu.pin_gpu_for_this_process()  # this child's GPU, before TensorFlow initialises CUDA
    predictor()
    gpu.log_device()


@signals.worker_ready.connect
def _start_watchdog(sender: Any = None, **_: Any) -> None:
    """Main process, once the worker consumes: the stalled-job watchdog (daemon thread)."""
    conf, knobs = celeryconfig, settings()
    watchdog = Watchdog(
        JobStore.from_url(app.conf.broker_url, retries=2),
        (conf.INFERENCE_QUEUE, conf.DEFAULT_QUEUE),
        _outcome_lookup,
        grace_s=knobs.stall_grace_s,
        interval_s=knobs.watchdog_interval_s,
        hard_limit_s=app.conf.task_time_limit,
        name=getattr(sender, "hostname", "worker"),
    )
    watchdog.start()
    _state["watchdog"] = watchdog
    log.info("stalled-job watchdog: sweep every %g s, grace %g s", knobs.watchdog_interval_s, knobs.stall_grace_s)


@signals.worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    if "watchdog" in _state:
        _state.pop("watchdog").stop()


@app.task(
    name="cxr.infer_file",
    bind=True,
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=celeryconfig.RETRY_BACKOFF_MAX_S,
    retry_jitter=True,
    max_retries=5,
)
def infer_file(self: Any, *, job_id: str, index: int, path: str, output: str, layout: str) -> dict[str, Any]:
    delivery = decide_delivery(
        job_store(),
        job_id,
        index,
        path=path,
        retries=int(self.request.retries or 0),
        max_deliveries=settings().max_deliveries,
        worker=self.request.hostname,
    )
    monitoring.delivery(delivery.action, delivery.deaths)
    if delivery.action == "ignore":
        log.warning("file %d of job %s not processed: the job is %s", index, job_id, delivery.job_state)
        return {"index": index, "status": "skipped", "job": delivery.job_state}
    if delivery.action == "recorded" and delivery.record is not None:
        log.info("file %d of job %s was recorded by an earlier delivery; not processed again", index, job_id)
        return {"index": index, "status": delivery.record["status"]}
    deaths = delivery.deaths
    if delivery.action == "give_up":
        log.error("file %d of job %s (%s): worker died %d times on it; given up", index, job_id, path, deaths)
        monitoring.file_done({"status": "skipped", "reason": "worker_lost"}, "bulk")
        return {"index": index, "status": "skipped"}
    if deaths:
        log.warning(
            "file %d of job %s: delivery %d (the worker died %d time(s) on it)", index, job_id, deaths + 1, deaths
        )
    try:
        record = process_file(
            Path(path), Path(output), predictor(), job_id=job_id, layout=layout, options=read_options()
        )
    except SoftTimeLimitExceeded:
        record = {
            "path": path,
            "status": "skipped",
            "reason": "timeout",
            "detail": f"soft time limit of {app.conf.task_soft_time_limit:g} s exceeded",
        }
        log.warning("file %d of job %s: soft time limit exceeded", index, job_id)
    record.update(index=index, worker=self.request.hostname)
    monitoring.file_done(record, "bulk")
    if deaths:
        record["deliveries"] = deaths + 1
    if job_store().record_file(job_id, index, record) is None:
        log.warning("file %d of job %s: the job finished while the file was processed; not recorded", index, job_id)
    return {"index": index, "status": record["status"]}


@app.task(name="cxr.infer_single", bind=True, acks_late=True, reject_on_worker_lost=False)
def infer_single(
    self: Any, *, path: str, output: str | None, patient_id: str | None, request_id: str
) -> dict[str, Any]:
    """``save_to_disk`` is ``output is not None``; else the artifacts come back in base64.

    Not redelivered when its process dies (no delivery cap here): the client waiting on
    it gets a 500 at once instead of a file that may kill worker after worker.
    """
    try:
        if output is not None:
            record = process_file(
                Path(path),
                Path(output),
                predictor(),
                job_id=request_id,
                layout="patient",
                options=read_options(),
                patient_id_override=patient_id,
                include_document=True,
            )
            monitoring.file_done(record, "single")
            if record["status"] != "processed":
                return record
            doc = record.pop("document")
            outputs = record["outputs"]
            images = {
                "source_image": outputs["source_image"],
                "heatmap": outputs["heatmap"],
                "report": outputs["report"],
                "predictions": outputs["predictions"],
            }
        else:
            art = analyse_file(
                Path(path), predictor(), job_id=request_id, options=read_options(), patient_id_override=patient_id
            )
            doc = art.document
            monitoring.file_done(
                {
                    "status": "processed",
                    "timings_ms": art.timings_ms,
                    "transfer_syntax": doc["provenance"].get("transfer_syntax"),
                },
                "single",
            )
            images = {
                kind: base64.b64encode(art.files[art.kinds[kind]]).decode("ascii")
                for kind in ("source_image", "heatmap", "report")
            }
    except CxrError as exc:
        monitoring.file_done({"status": "skipped", "reason": exc.reason}, "single")
        return {"path": path, "status": "skipped", "reason": exc.reason, "detail": exc.detail}
    except SoftTimeLimitExceeded:
        monitoring.file_done({"status": "skipped", "reason": "timeout"}, "single")
        return {"path": path, "status": "skipped", "reason": "timeout", "detail": "soft time limit exceeded"}
    data = {"result": doc["result"], "findings": doc["findings"], **images, "metadata": doc["metadata"]}
    return {"path": path, "status": "processed", "worker": self.request.hostname, "data": data}


@signals.task_postrun.connect
def _single_done(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """After a single inference's outcome is stored, wake the API waiting for it (``workers.single``)."""
    if task_id and getattr(sender, "name", None) == "cxr.infer_single":
        notify_done(job_store().client, task_id)


@app.task(name="cxr.finalize_job", acks_late=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=10)
def finalize_job_task(results: list[Any] | None = None, *, job_id: str) -> dict[str, Any]:
    summary = finalize_job(job_id, job_store(), _outcome_lookup(job_id), hard_limit_s=app.conf.task_time_limit)
    log.info("job %s finished: %d processed, %d skipped", job_id, summary["processed"], len(summary["skipped"]))
    return {"job_id": job_id, "status": summary["status"]}


@app.task(name="cxr.chord_failed")
def chord_failed(request: Any, exc: BaseException, traceback: Any, job_id: str) -> None:
    """Runs in the process that saw the chord fail; hands the job to ``cxr.finalize_job``.

    The Redis backend fails the chord only when *every* file's task has ended (Celery 5.7
    counts each task id once), so no other file of the job is still running here.
    """
    log.warning("job %s: a file's task failed without reporting (%s); finalising anyway", job_id, type(exc).__name__)
    app.signature("cxr.finalize_job", kwargs={"job_id": job_id}).apply_async()


def _outcome_lookup(job_id: str) -> Any:
    def lookup(index: int) -> TaskOutcome:
        result = AsyncResult(header_task_id(job_id, index), app=app)
        state = result.state
        if state == "PENDING":
            return None
        exc = result.result
        return state, type(exc).__name__ if isinstance(exc, BaseException) else ""

    return lookup
