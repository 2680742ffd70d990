"""The ``cxr`` command line as a user runs it: a real subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cxr(*args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CXR_TF_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "cxr", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def test_infer_folder_reports_processed_skipped_and_writes_the_summary(tmp_path, phantom_dir):
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    files = sorted(phantom_dir.glob("*.dcm"))[:3]
    for f in files[:2]:
        shutil.copy(f, inp / f.name)
    shutil.copy(files[2], inp / "sub" / "THIRD.DCM")
    (inp / "sub" / "broken.dcm").write_bytes(b"DICM" * 10)
    out = tmp_path / "out"
    proc = run_cxr("infer", str(inp), str(out), "--quiet", "--job-id", "cli-job")
    assert proc.returncode == 0, proc.stderr
    assert "job cli-job: 4 files, 3 processed, 1 skipped, 0 superseded" in proc.stdout
    assert "broken.dcm: unreadable_dicom" in proc.stdout
    assert "NOT FOR CLINICAL USE" in proc.stdout
    summary = json.loads((out / ".jobs" / "cli-job.json").read_text())
    assert summary["total"] == 4 and summary["processed"] == 3
    assert [s["reason"] for s in summary["skipped"]] == ["unreadable_dicom"]
    for folder in summary["outputs"].values():
        assert len(list(Path(folder).iterdir())) == 5  # four artifacts and the .cxr-engine marker


def test_infer_with_dicom_outputs_writes_sc_sr_and_pdf_objects(tmp_path, phantom_dir):
    src = min(phantom_dir.glob("*.dcm"))
    out = tmp_path / "out"
    proc = run_cxr("infer", str(src), str(out), "--quiet", "--job-id", "cli-dcm", "--dicom-outputs")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / ".jobs" / "cli-dcm.json").read_text())
    (folder,) = summary["outputs"].values()
    names = sorted(p.name for p in Path(folder).iterdir())
    assert [n for n in names if n.endswith(".dcm")] == [
        f"{Path(folder).name}_{s}" for s in ("report_pdf.dcm", "sc.dcm", "sr.dcm")
    ]


def test_dicom_node_refuses_a_spool_outside_the_data_roots(tmp_path):
    env = {"CXR_DATA_ROOTS": str(tmp_path / "data"), "CXR_DICOM_SPOOL": str(tmp_path / "elsewhere")}
    proc = subprocess.run(
        [sys.executable, "-m", "cxr", "dicom-node"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert f"CXR_DICOM_SPOOL ({tmp_path / 'elsewhere'}) must lie under CXR_DATA_ROOTS" in proc.stderr


def test_infer_refuses_missing_path_and_empty_folder(tmp_path):
    proc = run_cxr("infer", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cxr("infer", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert proc.returncode == 2 and "no DICOM images" in proc.stderr


def test_phantoms_command_writes_valid_files(tmp_path):
    proc = run_cxr("phantoms", str(tmp_path / "ph"), "--count", "3", "--size", "256", "--quiet")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "ph" / "phantoms.json").read_text())
    assert len(index) == 3 and all((tmp_path / "ph" / r["file"]).stat().st_size > 1000 for r in index)


def test_eval_prints_one_json_object_last(tmp_path):
    proc = run_cxr("eval", "--count", "64")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last) == {"auroc", "mean_auroc", "pointing_accuracy"}
    assert len(last["auroc"]) == 11
    assert 0.0 <= last["mean_auroc"] <= 1.0
