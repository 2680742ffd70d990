"""The job summary of the API contract: one builder, one atomic writer.

Every path that ends a job goes through here: ``cxr infer`` (in-process), the chord
callback (``workers.finalize``) and a job whose chord could not be sent
(``JobStore.fail``). So the summary has one shape wherever it was made, and a reader of
``<output>/.jobs/<job_id>.json`` never sees half a file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def summarise(records: Iterable[dict[str, Any]], *, job_id: str, total: int) -> dict[str, Any]:
    """The job summary from file records (``engine.pipeline.process_file``'s records).

    ``superseded`` is derived from the records, not from publish order: for each
    folder the record with the greatest rank is the winner (the publish rule keeps
    exactly that one on disk), the others are superseded.
    """
    records = list(records)
    processed = [r for r in records if r["status"] == "processed"]
    winners: dict[str, dict[str, Any]] = {}
    for r in processed:
        best = winners.get(r["folder"])
        if best is None or r["rank"] > best["rank"]:
            winners[r["folder"]] = r
    superseded = [
        {"path": r["path"], "folder": r["folder"], "kept": winners[r["folder"]]["path"]}
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


def failed_summary(records: Iterable[dict[str, Any]], *, job_id: str, total: int, failure: str) -> dict[str, Any]:
    """The summary of a job that ended ``failed`` (``failure`` says why), built like any other."""
    summary = summarise(records, job_id=job_id, total=total)
    summary.update(status="failed", failure=failure)
    summary.setdefault("workers", [])
    summary.setdefault("summary_file", None)
    return summary


def summary_path(output_root: Path, job_id: str) -> Path:
    return output_root / ".jobs" / f"{job_id}.json"


def write_summary_file(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` to ``path`` atomically: a temporary name in the same folder,
    flushed to disk, then renamed over the old file."""
    path.parent.mkdir(exist_ok=True)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
