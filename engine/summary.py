"""The job summary of the API contract: one builder, one atomic writer.

Every path that ends a job goes through here: ``cxr infer`` (in-process), the chord
callback (``workers.finalize``) and a job whose chord could not be sent
(``JobStore.fail``). So the summary has one shape wherever it was made, and a reader of
``<output>/.jobs/<job_id>.json`` never sees half a file.

A summary matches the disk at the moment it is written: with ``owners`` (what each
folder's ``.cxr-engine`` marker says now, ``reports.publish.folder_owners``) a processed
file counts as kept only if its folder still holds its image; one replaced since, by a
file of this job or of a later job, is listed in ``superseded`` with the image and job
that hold the folder now.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reports.beneath import open_dir, open_subdir, write_file_atomic


def summarise(
    records: Iterable[dict[str, Any]],
    *,
    job_id: str,
    total: int,
    owners: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The job summary from file records (``engine.pipeline.process_file``'s records).

    ``owners`` (folder -> its marker now, or None when it holds no engine output): a
    record is superseded unless its folder's marker names this job and its rank; the
    entry says which image (``kept``) and job (``kept_job_id``) hold the folder, both
    None when nothing does. Without ``owners`` (no disk to look at) the records alone
    decide: per folder the greatest rank is kept, as the publish rule does.
    """
    records = list(records)
    processed = [r for r in records if r["status"] == "processed"]
    if owners is not None:
        superseded = [entry for r in processed if (entry := _superseded_on_disk(r, owners, job_id)) is not None]
    else:
        winners: dict[str, dict[str, Any]] = {}
        for r in processed:
            best = winners.get(r["folder"])
            if best is None or r["rank"] > best["rank"]:
                winners[r["folder"]] = r
        superseded = [
            {"path": r["path"], "folder": r["folder"], "kept": winners[r["folder"]]["path"], "kept_job_id": job_id}
            for r in processed
            if winners[r["folder"]] is not r
        ]
    timings = [r["timings_ms"]["total"] for r in processed if "timings_ms" in r]
    return {
        "job_id": job_id,
        "status": "completed",
        "total": total,
        "processed": len(processed),
        "skipped": [
            {"path": r["path"], "reason": r["reason"], "detail": r["detail"]}
            for r in records
            if r["status"] == "skipped"
        ],
        "superseded": superseded,
        "outputs": {r["path"]: r["folder"] for r in processed},
        "timings": {
            "files_timed": len(timings),
            "mean_file_ms": round(float(np.mean(timings)), 1) if timings else None,
            "max_file_ms": round(float(np.max(timings)), 1) if timings else None,
        },
    }


def _superseded_on_disk(
    record: Mapping[str, Any], owners: Mapping[str, Mapping[str, Any] | None], job_id: str
) -> dict[str, Any] | None:
    owner = owners.get(record["folder"])
    if owner is not None and owner.get("job_id") == job_id and owner.get("rank") == record.get("rank"):
        return None
    rank = owner.get("rank") if owner is not None else None
    kept = rank[-1] if isinstance(rank, list) and rank else None  # the rank's last element is the source path
    return {
        "path": record["path"],
        "folder": record["folder"],
        "kept": kept,
        "kept_job_id": owner.get("job_id") if owner is not None else None,
    }


def failed_summary(records: Iterable[dict[str, Any]], *, job_id: str, total: int, failure: str) -> dict[str, Any]:
    """The summary of a job that ended ``failed`` (``failure`` says why), built like any other."""
    summary = summarise(records, job_id=job_id, total=total)
    summary.update(status="failed", failure=failure)
    summary.setdefault("workers", [])
    summary.setdefault("summary_file", None)
    return summary


def summary_path(output_root: Path, job_id: str) -> Path:
    return output_root / ".jobs" / f"{job_id}.json"


def write_summary_file(path: Path, summary: dict[str, Any], data_roots: Sequence[Path] | None = None) -> None:
    """Write ``summary`` to ``path`` (``summary_path``'s ``<output>/.jobs/<job_id>.json``)
    atomically: a temporary name in the same folder, flushed to disk, then renamed over
    the old file. The output folder is opened under ``data_roots`` when given, and
    neither ``.jobs`` nor the file is followed if it is a link (``reports.beneath``)."""
    data = (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    root_fd = open_dir(path.parent.parent, data_roots, "the output folder")
    try:
        jobs_fd = open_subdir(root_fd, path.parent.name, create=True)
        try:
            write_file_atomic(jobs_fd, path.name, data)
        finally:
            os.close(jobs_fd)
    finally:
        os.close(root_fd)
