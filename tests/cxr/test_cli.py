"""The ``cxr`` command line as a user runs it: a real subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.service  # each test runs the cxr command in a process that loads TensorFlow

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


def test_bundle_init_then_check_a_third_party_model(tmp_path, phantom_dir):
    """``cxr bundle init`` around a real .keras file: size, channels and Grad-CAM layer
    come from the model, the label map is left TODO and refused until filled in; then
    ``cxr bundle check`` passes, printing the label map and the time per image; a damaged
    weights file fails it with one line."""
    from bench.app_models import build_tiny

    model_file = tmp_path / "pneumonia.keras"
    build_tiny().save(model_file)
    bundle = tmp_path / "bundle"
    proc = run_cxr(
        "bundle",
        "init",
        str(model_file),
        str(bundle),
        "--labels",
        "NORMAL,PNEUMONIA",
        "--preset",
        "keras_tf",
        "--activation",
        "softmax",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Grad-CAM layer 'backbone/c2'" in proc.stdout and "TODO before use" in proc.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["schema"] == 2 and manifest["input"]["size"] == [64, 64] and manifest["input"]["channels"] == 3
    assert manifest["input"]["normalization"] == "keras_tf" and manifest["output"]["activation"] == "softmax"
    assert manifest["label_map"] == {"NORMAL": "TODO", "PNEUMONIA": "TODO"}
    assert (bundle / "pneumonia.keras").read_bytes() == model_file.read_bytes()

    proc = run_cxr("bundle", "check", str(bundle))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: model bundle {bundle}: label_map still says TODO for NORMAL, PNEUMONIA: "
        "map each to one of the 11 conditions, or null"
    )

    manifest["label_map"] = {"NORMAL": None, "PNEUMONIA": {"condition": "Consolidation", "relation": "broader"}}
    manifest["output"]["normal_label"] = "NORMAL"
    manifest["clinical_status"] = "research"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    dicom = min(phantom_dir.glob("*.dcm"))
    proc = run_cxr("bundle", "check", str(bundle), "--dicom", str(dicom))
    assert proc.returncode == 0, proc.stderr
    assert f"{dicom}: " in proc.stdout  # the real file went through the engine too
    assert "PNEUMONIA                    -> Consolidation (broader, not used for the condition)" in proc.stdout
    assert "NORMAL                       -> (unmapped" in proc.stdout
    assert "not assessed: Tuberculosis, Cardiomegaly" in proc.stdout
    assert "ms per image (forward + Grad-CAM)" in proc.stdout and proc.stdout.rstrip().endswith("OK")

    proc = run_cxr("bundle", "check", str(bundle), "--dicom", str(tmp_path / "pneumonia.keras"))
    assert proc.returncode == 1 and "the engine refuses it (unreadable_dicom" in proc.stderr

    weights = bundle / "pneumonia.keras"
    weights.write_bytes(weights.read_bytes()[:-10])
    proc = run_cxr("bundle", "check", str(bundle))
    assert proc.returncode == 1
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "SHA-256 of pneumonia.keras is" in line and "the weights were changed or damaged" in line
