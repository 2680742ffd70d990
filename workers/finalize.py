"""Completing a bulk job: from per-file records to the job summary (no Celery here).

Called by the chord callback, by the chord's error path when a per-file task died in
a way it could not report itself (hard time limit), and by the stalled-job watchdog
(``workers.watchdog``) when a job's messages were lost. Either way every file of the
job ends up in the summary, processed or skipped with a reason:

* a file with a record in the job store is taken as recorded;
* a file without one is classified from how its task ended (``classify_lost_file``):
  a hard time limit becomes ``timeout``; a task that left no trace at all becomes
  ``lost`` when the watchdog finalises (its message is gone from Redis), else
  ``inference_error``; anything else ``inference_error``.

A job with a ``lost`` file ends ``failed`` (the summary's ``failure`` says why); every
other job ends ``completed``, whatever its skips.

The summary goes to the job record and to ``<output>/.jobs/<job_id>.json`` (written to
a temporary name and renamed, so a reader never sees half a file). Running it twice
gives the same summary (unless a later job replaced one of the job's folders in
between, which the second one then says), so a redelivered callback is harmless.

The summary matches the disk when it is written: ``superseded`` comes from the
``.cxr-engine`` markers of the job's folders as they are now (a folder replaced by a
later job's file names that job). Every file-system step goes through the worker's data
roots without following links (``reports.beneath``): a ``.jobs`` or ``.tmp`` that is a
link is not followed, and the summary file is then not written (``summary_file: null``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.jobstore import JobStore
from engine.summary import summarise, summary_path, write_summary_file
from inference.errors import CxrError
from reports.publish import folder_owners, remove_job_temp_dirs, remove_stale_temp_dirs

log = logging.getLogger(__name__)

#: ``(state, exception type name)`` of a file's task, or ``None`` when nothing is known.
TaskOutcome = tuple[str, str] | None


LOST_DETAIL = (
    "the file's task message is no longer in Redis (the broker restarted without its data, "
    "or the queue was deleted); the file was not processed"
)
LOST_FAILURE = "messages of this job were lost by the broker; the files listed as 'lost' were not processed"


def classify_lost_file(
    path: str, outcome: TaskOutcome, hard_limit_s: float, *, messages_lost: bool = False
) -> dict[str, Any]:
    """A skip record for a file whose task ended without recording the file.

    ``messages_lost``: the caller (the watchdog) checked that no message of the job is
    left in Redis, so a task with no stored result can never run.
    """
    record: dict[str, Any] = {"path": path, "status": "skipped", "reason": "inference_error"}
    if outcome is None and messages_lost:
        record.update(reason="lost", detail=LOST_DETAIL)
    elif outcome is None:
        record["detail"] = "the file's task left no result (lost message or expired result)"
    elif outcome[1] == "TimeLimitExceeded":
        record.update(
            reason="timeout", detail=f"hard time limit of {hard_limit_s:g} s exceeded; the process was stopped"
        )
    elif outcome[1] == "WorkerLostError":
        record["detail"] = "the worker process died while processing this file"
    else:
        record["detail"] = f"the file's task failed ({outcome[1]})"
    return record


def finalize_job(
    job_id: str,
    store: JobStore,
    task_outcome: Callable[[int], TaskOutcome],
    *,
    hard_limit_s: float,
    messages_lost: bool = False,
    data_roots: Sequence[Path] | None = None,
    deliver: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``deliver`` (the chord callback's, when ``CXR_DICOM_DESTINATION`` is set): sends the
    job's DICOM outputs once every file has ended; what it returns joins the summary
    (``workers.dicom_send``). The watchdog's path sends nothing."""
    meta = store.meta(job_id)
    total = int(meta.get("total", 0))
    paths = store.job_paths(job_id)
    records = store.file_records(job_id)
    ordered: list[dict[str, Any]] = []
    for index in range(total):
        record = records.get(index)
        if record is None:
            path = paths[index] if index < len(paths) else f"<file {index}>"
            record = classify_lost_file(path, task_outcome(index), hard_limit_s, messages_lost=messages_lost)
            log.warning("job %s file %d had no record: %s", job_id, index, record["detail"])
        ordered.append(record)
    output_root = Path(meta["output"])
    folders = [r["folder"] for r in ordered if r.get("status") == "processed" and r.get("folder")]
    owners = folder_owners(output_root, folders, data_roots)
    summary = summarise(ordered, job_id=job_id, total=total, owners=owners)
    if any(r.get("reason") == "lost" for r in ordered):
        summary.update(status="failed", failure=LOST_FAILURE)
    now = time.time()
    created = float(meta.get("created_at", now))
    started = float(meta["started_at"]) if meta.get("started_at") else None
    summary["timings"].update(
        {
            "wall_s": round(now - created, 3),
            "queued_s": round(started - created, 3) if started is not None else None,
        }
    )
    summary["workers"] = sorted({r["worker"] for r in ordered if r.get("worker")})
    if deliver is not None:
        summary.update(deliver(ordered))
    summary_file = summary_path(output_root, job_id)
    summary["summary_file"] = str(summary_file)
    try:
        write_summary_file(summary_file, summary, data_roots)
    except (OSError, CxrError) as exc:
        summary["summary_file"] = None
        why = exc.detail if isinstance(exc, CxrError) else exc.strerror
        log.error("job %s: could not write the summary file under %s: %s", job_id, output_root, why)
    store.finish(job_id, summary)
    try:
        # Every task of the job has ended: its staging folders are leftovers of killed writers.
        removed = remove_job_temp_dirs(output_root, job_id, data_roots)
        if removed:
            log.warning("job %s: removed %d staging folder(s) left by killed workers", job_id, len(removed))
        remove_stale_temp_dirs(output_root, data_roots=data_roots)
    except (OSError, CxrError) as exc:
        why = exc.detail if isinstance(exc, CxrError) else exc.strerror
        log.warning("job %s: could not clean stale staging folders: %s", job_id, why)
    return summary
