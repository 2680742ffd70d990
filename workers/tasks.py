"""Celery tasks: the only place where the inference core meets Celery.

Like a web view, each task unpacks its arguments, calls plain functions
(``engine.pipeline``, ``workers.finalize``) and handles retries; nothing more.

* ``cxr.infer_file`` (queue ``inference``): one file of a bulk job. It never raises for
  a file problem: a refused or failed file becomes a skip record, so the chord callback
  always runs. Its soft time limit becomes a ``timeout`` skip. Only a transient Redis
  failure (recording the result) raises, and is retried with exponential backoff.
  A full Redis (``maxmemory``, ``noeviction``: OOM) is waited out in the task instead
  (``while_redis_full``): a Celery retry would have to publish a new message, which a
  full Redis refuses, and Celery then drops the file's message.
  What to do with a delivery is decided by ``engine.delivery.decide_delivery`` (a plain
  function of the job store): a file recorded by an earlier delivery is not processed
  again; a file of a finished or unknown job is not processed at all; and a file whose
  worker process died ``CXR_MAX_DELIVERIES`` times while processing it (the message
  comes back each time, ``task_reject_on_worker_lost``) is skipped as ``worker_lost``.
* ``cxr.infer_single`` (queue ``single``, served first): ``POST /single_inference``.
* ``cxr.finalize_job`` (default queue): the chord callback; sends the job's DICOM outputs
  to ``CXR_DICOM_DESTINATION`` when it is set (``workers.dicom_send``), then writes the
  job summary.
* ``cxr.chord_failed``: the callback's error hook, called once every file's task has
  ended, when one of them ended without reporting (hard time limit); it finalises the
  job anyway. A killed process no longer ends a task (its message is redelivered).

The worker's main process also runs the stalled-job watchdog (``workers.watchdog``).

The model is loaded once per worker *process*, after the fork (``worker_process_init``),
never in the parent: CUDA state does not survive a fork. Then the process bounds its own
memory (``workers.memory``, ``CXR_WORKER_MEMORY_MB``), so one file cannot take the host
down. The parent checks the bundle fully at start-up (manifest, weights checksum, then
``inference.bundle_tools`` loads and probes the model in a child interpreter, remembered
once passed), so a worker with a bad bundle refuses to start, with one line naming the
reason, instead of failing every file. (A Celery signal handler's exception is only
logged, so the refusal is a ``SystemExit``, which Celery does not catch.)
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult
from redis.exceptions import OutOfMemoryError

import celeryconfig
from engine import monitoring
from engine.delivery import decide_delivery
from engine.jobstore import JobStore
from engine.pipeline import analyse_file, process_file
from engine.settings import WorkerSettings
from inference.bundle import read_bundle
from inference.bundle_tools import check_in_child
from inference.dicom_read import ReadOptions
from inference.errors import BundleError, CxrError, register_interrupt
from inference.predict import Predictor, configure_tensorflow
from reports.dicom_outputs import DICOM_SUFFIXES
from reports.pdf_fonts import prepare_fonts
from workers import gpu, memory
from workers.app import worker_app
from workers.canvas import header_task_id
from workers.dicom_send import SendSettings, deliver
from workers.finalize import TaskOutcome, finalize_job
from workers.single import notify_done, store_outcome
from workers.watchdog import Watchdog

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # fpdf2's font subsetting chatters at INFO

app = worker_app()
TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
register_interrupt(SoftTimeLimitExceeded)  # a slow file is a timeout, not a decode error
_lock = threading.Lock()
_state: dict[str, Any] = {}
T = TypeVar("T")
#: First and longest pause between two tries while Redis is full.
FULL_PAUSE_S, FULL_PAUSE_MAX_S = 0.2, 2.0


def waits_while_redis_full(task: Callable[..., T]) -> Callable[..., T]:
    """A task body run by ``while_redis_full`` (for a body that is idempotent as a whole)."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> T:
        return while_redis_full(f"{task.__name__} {kwargs.get('job_id', '')}".strip(), lambda: task(*args, **kwargs))

    return run


def while_redis_full(what: str, call: Callable[[], T]) -> T:
    """``call()``, tried again (backoff to ``FULL_PAUSE_MAX_S``) for as long as Redis is full.

    A full Redis refuses writes (OOM) until someone makes room; the job store's writes
    are idempotent (``engine.jobstore``), so trying again is safe. The task's soft time
    limit bounds the wait: it interrupts the pause like any other work.
    """
    pause, warned = FULL_PAUSE_S, False
    while True:
        try:
            return call()
        except OutOfMemoryError:
            if not warned:
                log.warning("%s: Redis is full (maxmemory); trying again until it has room", what)
                warned = True
            time.sleep(pause)
            pause = min(pause * 2, FULL_PAUSE_MAX_S)


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
    try:
        bundle = read_bundle()
        checked = check_in_child(bundle.path, bundle.operating_point)
    except BundleError as exc:
        log.critical("worker refuses to start: %s", exc)
        raise SystemExit(f"worker refuses to start: {exc}") from None
    log.info("model bundle %s verified (%s)", bundle.identity(), "checked" if checked else "checked before")
    try:  # read now, before the fork, and inherited; a bad value refuses to start, naming the variable
        log.info("worker settings: %s", settings())
        log.info("read options: max %d values per frame (CXR_MAX_PIXELS)", read_options().max_pixels)
        _state["memory_mb"] = memory.headroom_mb()
    except ValueError as exc:
        log.critical("worker refuses to start: %s", exc)
        raise SystemExit(f"worker refuses to start: {exc}") from None
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
    # Bound this child's memory once the model is in (workers.memory): one file cannot take the host down.
    headroom = _state.get("memory_mb", memory.DEFAULT_WORKER_MEMORY_MB)
    limit = memory.limit_process_memory(headroom)
    if limit is not None:
        log.info("process %d: RLIMIT_DATA %d MiB (%d MiB above the loaded model)", os.getpid(), limit >> 20, headroom)


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
        data_roots=knobs.data_roots,
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
def infer_file(
    self: Any, *, job_id: str, index: int, path: str, output: str, layout: str, dicom_outputs: bool = False
) -> dict[str, Any]:
    delivery = while_redis_full(
        f"file {index} of job {job_id}",
        lambda: decide_delivery(
            job_store(),
            job_id,
            index,
            path=path,
            retries=int(self.request.retries or 0),
            max_deliveries=settings().max_deliveries,
            worker=self.request.hostname,
        ),
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
            Path(path),
            Path(output),
            predictor(),
            job_id=job_id,
            layout=layout,
            options=read_options(),
            data_roots=settings().data_roots,
            dicom_outputs=dicom_outputs,
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
    if (
        while_redis_full(f"file {index} of job {job_id}", lambda: job_store().record_file(job_id, index, record))
        is None
    ):
        log.warning("file %d of job %s: the job finished while the file was processed; not recorded", index, job_id)
    return {"index": index, "status": record["status"]}


@app.task(name="cxr.infer_single", bind=True, acks_late=True, reject_on_worker_lost=False)
def infer_single(
    self: Any,
    *,
    path: str,
    output: str | None,
    patient_id: str | None,
    request_id: str,
    dicom_outputs: bool = False,
) -> dict[str, Any]:
    """``save_to_disk`` is ``output is not None``; else the artifacts come back in base64
    (with ``dicom_outputs``, the three DICOM objects too, under their kinds).

    The answer goes to the API through ``workers.single.store_outcome``; the task's own
    result (what Flower shows and the result backend keeps) is its id and status only.
    Not redelivered when its process dies (no delivery cap here): the client waiting on
    it gets a 500 at once instead of a file that may kill worker after worker.
    """
    outcome = _single_outcome(path, output, patient_id, request_id, self.request.hostname, dicom_outputs)
    while_redis_full(f"single inference {request_id}", lambda: store_outcome(job_store().client, request_id, outcome))
    return {"request_id": request_id, "status": outcome["status"]}


def _single_outcome(
    path: str, output: str | None, patient_id: str | None, request_id: str, hostname: str, dicom_outputs: bool
) -> dict[str, Any]:
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
                data_roots=settings().data_roots,
                dicom_outputs=dicom_outputs,
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
                # False: the folder holds an image of greater rank (a more recent acquisition),
                # which stays; the paths above are that image's artifacts (API.md "Output layout").
                "published": record["published"],
            }
            images.update({kind: outputs[kind] for kind in DICOM_SUFFIXES if kind in outputs})
        else:
            art = analyse_file(
                Path(path),
                predictor(),
                job_id=request_id,
                options=read_options(),
                patient_id_override=patient_id,
                data_roots=settings().data_roots,
                dicom_outputs=dicom_outputs,
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
                for kind in ("source_image", "heatmap", "report", *DICOM_SUFFIXES)
                if kind in art.kinds
            }
    except CxrError as exc:
        monitoring.file_done({"status": "skipped", "reason": exc.reason}, "single")
        return {"path": path, "status": "skipped", "reason": exc.reason, "detail": exc.detail}
    except SoftTimeLimitExceeded:
        monitoring.file_done({"status": "skipped", "reason": "timeout"}, "single")
        return {"path": path, "status": "skipped", "reason": "timeout", "detail": "soft time limit exceeded"}
    data = {"result": doc["result"], "findings": doc["findings"], **images, "metadata": doc["metadata"]}
    return {"path": path, "status": "processed", "worker": hostname, "data": data}


@signals.task_postrun.connect
def _single_done(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """After a single inference's outcome is stored, wake the API waiting for it (``workers.single``)."""
    if task_id and getattr(sender, "name", None) == "cxr.infer_single":
        notify_done(job_store().client, task_id)


@app.task(name="cxr.finalize_job", acks_late=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=10)
@waits_while_redis_full  # finalising is idempotent (workers.finalize): tried whole again
def finalize_job_task(results: list[Any] | None = None, *, job_id: str) -> dict[str, Any]:
    summary = finalize_job(
        job_id,
        job_store(),
        _outcome_lookup(job_id),
        hard_limit_s=app.conf.task_time_limit,
        data_roots=settings().data_roots,
        deliver=_dicom_delivery(),
    )
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


def _dicom_delivery() -> Any:
    """Sending the job's DICOM outputs back (``workers.dicom_send``), when a destination
    (``CXR_DICOM_DESTINATION`` or ``CXR_DICOMWEB_URL``) is set.

    Bounded by half the callback's soft time limit, so the summary is always written."""
    if "send_settings" not in _state:
        _state["send_settings"] = SendSettings.from_env()
    send_settings = _state["send_settings"]
    if not send_settings.enabled:
        return None
    budget = float(app.conf.task_soft_time_limit or app.conf.task_time_limit or 300.0) / 2
    return lambda records: deliver(records, send_settings, budget_s=budget)


def _outcome_lookup(job_id: str) -> Any:
    def lookup(index: int) -> TaskOutcome:
        result = AsyncResult(header_task_id(job_id, index), app=app)
        state = result.state
        if state == "PENDING":
            return None
        exc = result.result
        return state, type(exc).__name__ if isinstance(exc, BaseException) else ""

    return lookup
