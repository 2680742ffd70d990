"""``POST /single_inference`` and ``POST /bulk_inference``.

Both validate the request here (fast, names only) and hand the work to workers: the
API process never imports TensorFlow. Bulk: the folder is listed, a job record is
created in Redis and a chord is sent (one task per file); with ``wait`` (default) the
request polls the job record until the job finishes or ``CXR_BULK_WAIT_S`` passes,
then answers 202 ``Warning`` with the job id. Single: one task on the ``single``
queue (which workers serve before bulk files); the request waits for the task to end,
woken by the worker through ``workers.single``, for up to ``CXR_SINGLE_WAIT_S`` (the
message expires then, so a late worker will not run it), takes the answer the worker
left there (not the Celery result, which Flower shows: no patient data goes there) and
answers 503 when no worker took it. A bulk job records the token's subject as its owner
(``GET /jobs/<id>``).

Sending the chord costs about 2 ms per file (30,000 files: a minute), so with ``wait:
false`` it is sent by the process's ``api.bulk_sender.BackgroundSender`` and the 202
comes as soon as the job record exists: the record reads ``queued`` until a worker
records a file. If the send fails, the job is marked ``failed`` with the reason, as an
inline send does (there the client gets the 503). With ``wait`` the request sends the
chord itself (it waits anyway), so a broker failure is still its 503. A process killed
mid-send (gunicorn's graceful timeout passed) leaves the unsent files without messages:
the workers' watchdog fails the job with them ``lost``, as for any lost message.

A waiting bulk request holds one of the process's gunicorn threads for up to
``CXR_BULK_WAIT_S``: at most ``CXR_MAX_BULK_WAITS`` wait at once per process, the next
answer 503 with ``Retry-After`` before anything is listed or queued, so waiting
clients can never take every thread (``/ping``, status reads and ``wait: false``
requests always find one).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, url_for
from flask_jwt_extended import get_jwt_identity, jwt_required

from api import BROKER_ERRORS
from api.bulk_sender import BackgroundSender
from api.envelope import ApiError, envelope
from api.requests import (
    boolean_field,
    json_body,
    layout_field,
    make_output_folder,
    path_exists,
    patient_id_field,
    require,
    server_path,
)
from engine import monitoring
from engine.discovery import discover_inputs
from engine.logs import bind_log_context
from workers.canvas import send_bulk_job, send_finalize, send_single
from workers.single import take_outcome, wait_done

log = logging.getLogger(__name__)
bp = Blueprint("inference", __name__)

SINGLE_OK = "Inference completed successfully."
SINGLE_INTERNAL = "Single Inference failed due to an internal error"
BULK_OK = "Bulk inference completed successfully."
BULK_ACCEPTED = "Bulk inference accepted."
BULK_STILL_RUNNING = "Bulk inference is still running; poll status_url for the summary."
BULK_WAITS_FULL = 'Too many bulk requests are waiting for their jobs; retry later, or send "wait": false'
SINGLE_RECHECK_S = 1.0  # stored result re-read this often while no marker comes
#: Retry-After of the 503 answered when every bulk waiting slot is taken.
BULK_RETRY_AFTER_S = 10


def init_bulk(app: Any) -> None:
    """Per API process: the waiting slots and the background senders (threads start on
    first use, so after gunicorn's fork)."""
    app.extensions["cxr_bulk_waits"] = threading.BoundedSemaphore(int(app.config["CXR_MAX_BULK_WAITS"]))
    app.extensions["cxr_sender"] = BackgroundSender()


@bp.post("/single_inference")
@jwt_required()
def single_inference() -> Any:
    body = json_body()
    raw_input = require(body, "input_image_path", "input_image_path is required in the request")
    save = boolean_field(body, "save_to_disk", True)
    raw_output = body.get("output_folder_path")
    if save and raw_output is None:
        raise ApiError(400, "output_folder_path is required in the request when save_to_disk is True")
    roots = current_app.config["DATA_ROOTS"]
    image = server_path("input_image_path", raw_input, roots)
    output = server_path("output_folder_path", raw_output, roots) if save else None
    patient_id = patient_id_field(body)
    dicom_outputs = boolean_field(body, "dicom_outputs", False)
    if not path_exists(image):
        raise ApiError(400, f"Input image path does not exist: {raw_input}")
    # The extension rule applies to the name the client sent, not to a symlink's target.
    if not image.is_file() or not str(raw_input).lower().endswith(".dcm"):
        raise ApiError(400, f"Requested image is not a DICOM file: {raw_input}")
    if output is not None:
        make_output_folder(output, str(raw_output))

    wait_s = float(current_app.config["CXR_SINGLE_WAIT_S"])
    celery = current_app.extensions["cxr_celery"]
    task_id = f"single-{uuid.uuid4().hex}"
    bind_log_context(task_id=task_id)
    send_single(
        celery,
        request_id=task_id,
        path=str(image),
        output=str(output) if output else None,
        patient_id=patient_id,
        expires_s=wait_s,
        dicom_outputs=dicom_outputs,
    )
    outcome = _wait_for_task(celery, task_id, wait_s)
    if outcome is None:
        raise ApiError(503, f"No inference worker answered within {wait_s:g} s; the request was withdrawn")
    return _single_answer(outcome, str(raw_input), str(raw_output))


def _wait_for_task(celery: Any, task_id: str, wait_s: float) -> dict[str, Any] | None:
    """Wait for the task's stored result: woken by the worker's marker (``workers.single``).

    Between markers the stored result is read once a second (a plain GET), so an
    outcome stored without a marker (a worker killed at its hard time limit, whose
    failure the parent records) is still seen. No pub/sub in the API.
    """
    backend = celery.backend
    client = current_app.extensions["cxr_jobs"].client
    deadline = time.monotonic() + wait_s
    while True:
        meta = backend.get_task_meta(task_id, cache=False)
        if meta["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            backend.forget(task_id)
            outcome = take_outcome(client, task_id)  # the answer is not the Celery result (workers.single)
            if meta["status"] != "SUCCESS" or outcome is None:
                log.error("single inference task %s ended in %s without an answer", task_id, meta["status"])
                raise ApiError(500, SINGLE_INTERNAL)
            return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        wait_done(client, task_id, min(remaining, SINGLE_RECHECK_S))


def _single_answer(outcome: dict[str, Any], shown_input: str, shown_output: str) -> Any:
    if outcome["status"] == "processed":
        return envelope(200, SINGLE_OK, outcome["data"])
    reason, detail = outcome.get("reason"), outcome.get("detail")
    if reason == "unreadable_dicom":
        raise ApiError(
            400, f"Invalid DICOM image, unable to fetch patient ID: {shown_input}", {"reason": reason, "detail": detail}
        )
    if reason == "missing_patient_id":
        raise ApiError(400, f"Patient ID is empty or None: {shown_input}", {"reason": reason, "detail": detail})
    if reason in ("unsupported_modality", "unsupported_image", "decode_error"):
        raise ApiError(400, f"Image cannot be processed ({reason}): {detail}", {"reason": reason, "detail": detail})
    if outcome.get("stage") == "publish":  # the detail names the conflict (a name the engine did not make)
        raise ApiError(500, f"Unable to create output folder: {shown_output}", {"reason": reason, "detail": detail})
    log.error("single inference failed: %s", reason)
    raise ApiError(500, SINGLE_INTERNAL, {"reason": reason})


@bp.post("/bulk_inference")
@jwt_required()
def bulk_inference() -> Any:
    body = json_body()
    raw_input = require(body, "input_folder_path", "input_folder_path is required in the request")
    raw_output = require(body, "output_folder_path", "output_folder_path is required in the request")
    wait = boolean_field(body, "wait", True)
    layout = layout_field(body)
    dicom_outputs = boolean_field(body, "dicom_outputs", False)
    roots = current_app.config["DATA_ROOTS"]
    folder = server_path("input_folder_path", raw_input, roots)
    output = server_path("output_folder_path", raw_output, roots)
    if not wait:
        return _bulk(raw_input, raw_output, folder, output, layout, wait=False, dicom_outputs=dicom_outputs)
    slots = current_app.extensions["cxr_bulk_waits"]
    if not slots.acquire(blocking=False):
        log.warning(
            "bulk request refused: %d requests of this process are waiting", current_app.config["CXR_MAX_BULK_WAITS"]
        )
        response, status = envelope(503, BULK_WAITS_FULL, {"retry_after_s": BULK_RETRY_AFTER_S}, result="Failure")
        response.headers["Retry-After"] = str(BULK_RETRY_AFTER_S)
        return response, status
    try:
        return _bulk(raw_input, raw_output, folder, output, layout, wait=True, dicom_outputs=dicom_outputs)
    finally:
        slots.release()


def _bulk(
    raw_input: Any, raw_output: Any, folder: Path, output: Path, layout: str, *, wait: bool, dicom_outputs: bool
) -> Any:
    roots = current_app.config["DATA_ROOTS"]
    if not path_exists(folder):
        raise ApiError(400, f"Input folder path does not exist: {raw_input}")
    found = discover_inputs(folder, roots)
    if not found.total:
        raise ApiError(400, "No Dicom images found in the provided path")
    make_output_folder(output, str(raw_output))

    job_id = uuid.uuid4().hex
    bind_log_context(job_id=job_id)
    store = current_app.extensions["cxr_jobs"]
    # Files 0..n-1 go to workers; the ones discovery refused (symbolic links out of the
    # roots, FIFOs...) take the indexes after them and are recorded before the chord is
    # sent, so the callback finds them. With nothing to send, the callback runs alone.
    paths = found.files + [r["path"] for r in found.refused]
    store.create(
        job_id, paths=paths, input_path=str(folder), output_path=str(output), layout=layout, owner=get_jwt_identity()
    )
    for index, record in enumerate(found.refused, start=len(found.files)):
        store.record_file(job_id, index, {**record, "status": "skipped", "stage": "discovery", "index": index})
    celery = current_app.extensions["cxr_celery"]
    monitoring.job_submitted(layout, found.refused)  # the record exists: the job is submitted
    status_url = url_for("jobs.job_status", job_id=job_id)
    send = (store, celery, job_id, found.files, str(output), layout, len(found.refused), dicom_outputs)
    if not wait:
        current_app.extensions["cxr_sender"].submit(job_id, store, partial(_send_in_background, *send))
        return envelope(202, BULK_ACCEPTED, {"job_id": job_id, "status_url": status_url})
    _send_job(*send)  # a broker error reaches the error handler: 503
    progress = _wait_for_job(
        store, job_id, float(current_app.config["CXR_BULK_WAIT_S"]), float(current_app.config["CXR_POLL_INTERVAL_S"])
    )
    if progress is None or not progress.finished:
        return envelope(
            202,
            BULK_STILL_RUNNING,
            {"job_id": job_id, "status_url": status_url, **(progress.as_data() if progress else {})},
            result="Warning",
        )
    if progress.status != "completed":
        raise ApiError(500, "Bulk inference failed due to an internal error", progress.summary)
    return envelope(200, BULK_OK, progress.summary)


def _send_job(
    store: Any,
    celery: Any,
    job_id: str,
    files: list[str],
    output: str,
    layout: str,
    refused: int,
    dicom_outputs: bool = False,
) -> None:
    try:
        if files:
            send_bulk_job(celery, job_id, files, output, layout, dicom_outputs=dicom_outputs)
        else:
            send_finalize(celery, job_id)
    except BROKER_ERRORS:
        _fail_unsent_job(store, job_id)
        raise
    log.info("job %s: %d files sent, %d refused by discovery", job_id, len(files), refused)


def _send_in_background(*args: Any) -> None:
    """``_send_job`` in a sender thread: no client to answer, so every failure ends the job."""
    job_id = args[2]
    try:
        _send_job(*args)
    except BROKER_ERRORS:
        pass  # logged, and the job marked failed, by _send_job
    except Exception:
        log.exception("job %s: sending its tasks failed", job_id)
        _fail_unsent_job(args[0], job_id)


def _fail_unsent_job(store: Any, job_id: str) -> None:
    """The record exists but the chord was not (fully) sent: it must not read "running".

    Marked failed at once; tasks that did get out find the job finished and do nothing
    (``cxr.infer_file``). If Redis is down for this write too, the record stays queued
    with no messages, and the workers' stalled-job watchdog fails it later.
    """
    log.error("job %s: sending its tasks failed; the job is marked failed", job_id)
    try:
        store.fail(job_id, "the job's tasks could not be sent to the broker; nothing was processed")
    except BROKER_ERRORS as exc:
        log.error("job %s: could not mark the job failed either (%s)", job_id, type(exc).__name__)


def _wait_for_job(store: Any, job_id: str, wait_s: float, interval_s: float) -> Any:
    deadline = time.monotonic() + wait_s
    while True:
        progress = store.progress(job_id)
        if progress is None or progress.finished or time.monotonic() >= deadline:
            return progress
        time.sleep(min(interval_s, max(deadline - time.monotonic(), 0.0)))
