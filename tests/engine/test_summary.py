"""The job summary's one writer: atomic, and never leaving a temporary file behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.summary import failed_summary, summarise, summary_path, write_summary_file


def test_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = summary_path(tmp_path, "job-1")
    write_summary_file(path, {"job_id": "job-1", "n": 1})
    write_summary_file(path, {"job_id": "job-1", "n": 2, "name": "Ünïcode"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"job_id": "job-1", "n": 2, "name": "Ünïcode"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["job-1.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = summary_path(tmp_path, "job-2")
    write_summary_file(path, {"ok": True})
    with pytest.raises(TypeError):
        write_summary_file(path, {"bad": object()})  # not JSON-serialisable
    assert json.loads(path.read_text(encoding="utf-8")) == {"ok": True}
    assert sorted(p.name for p in path.parent.iterdir()) == ["job-2.json"]


def test_failed_summary_is_the_summary_shape_with_its_reason() -> None:
    records = [{"path": "/a.dcm", "status": "skipped", "reason": "lost", "detail": "x"}]
    ok, failed = summarise(records, job_id="j", total=1), failed_summary(records, job_id="j", total=1, failure="why")
    assert failed["status"] == "failed" and failed["failure"] == "why"
    assert set(failed) - set(ok) == {"failure", "workers", "summary_file"}
    assert failed["skipped"] == ok["skipped"] == [{"path": "/a.dcm", "reason": "lost", "detail": "x"}]
