"""One file in, four artifacts out: the pipeline end to end on real files."""

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pypdf import PdfReader

from demo.phantom_dicom import PhantomFileSpec, phantom_dataset
from demo.phantoms import make_phantom
from engine.discovery import iter_dicom_files
from engine.pipeline import process_file
from engine.summary import summarise
from inference.labels import LABELS
from reports.publish import folder_owners


def _write_phantom(path, index, *, patient_id=None, acquisition=None, size=320, seed=31):
    ds = phantom_dataset(
        make_phantom(seed, index, size=size),
        seed=seed,
        index=index,
        spec=PhantomFileSpec.for_index(index),
        patient_id=patient_id,
    )
    if acquisition:
        ds.AcquisitionDateTime = acquisition
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_processed_file_has_four_artifacts_in_the_api_layout(tmp_path, phantom_dir, predictor):
    src = sorted(phantom_dir.glob("*.dcm"))[1]  # JPEG 2000, MONOCHROME1
    ds = pydicom.dcmread(src)
    out = tmp_path / "out"
    out.mkdir()
    record = process_file(src, out, predictor, job_id="job-1")
    assert record["status"] == "processed", record
    pid = str(ds.PatientID)
    folder = out / pid
    assert record["folder"] == str(folder)
    names = sorted(p.name for p in folder.iterdir() if p.name != ".cxr-engine")
    assert names == sorted(f"{pid}_{s}" for s in ("predictions.json", "heatmap.png", "source_image.png", "report.pdf"))
    marker = json.loads((folder / ".cxr-engine").read_text())
    assert (
        marker["job_id"] == "job-1"
        and marker["rank"] == record["rank"]
        and marker["model"] == predictor.bundle.identity()
    )

    doc = json.loads((folder / f"{pid}_predictions.json").read_text(encoding="utf-8"))
    assert [f["name"] for f in doc["findings"]] == list(LABELS)
    for f in doc["findings"]:
        assert 0 <= f["confidence"] <= 1
        assert f["presence"] == (f["confidence"] >= doc["thresholds"][f["name"]])
    present = {f["name"] for f in doc["findings"] if f["presence"]}
    expected = "TB Presumptive" if "Tuberculosis" in present else ("Abnormal" if present else "Normal")
    assert doc["result"] == expected
    assert set(doc["metadata"]) == {
        "model_version",
        "patient_id",
        "patient_name",
        "sop_instance_uid",
        "age",
        "sex",
    }
    assert all(isinstance(v, str) for v in doc["metadata"].values())
    assert doc["metadata"]["patient_id"] == pid
    assert doc["metadata"]["age"] == str(ds.PatientAge)
    assert doc["model"]["demo"] is True and "NOT FOR CLINICAL USE" in doc["model"]["intended_use"]
    assert doc["heatmap"]["method"] == "grad-cam" and doc["heatmap"]["finding"] in LABELS
    assert doc["heatmap"]["layer"] == predictor.bundle.gradcam_layer
    prov = doc["provenance"]
    assert prov["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90"
    assert prov["decoder"] and prov["inverted"] is True
    assert {"read_decode", "forward_gradcam", "report_pdf"} <= set(doc["timings_ms"])

    source = cv2.imdecode(
        np.frombuffer((folder / f"{pid}_source_image.png").read_bytes(), np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert source.dtype == np.uint8 and source.shape == (ds.Rows, ds.Columns)
    heat = cv2.imdecode(
        np.frombuffer((folder / f"{pid}_heatmap.png").read_bytes(), np.uint8),
        cv2.IMREAD_COLOR,
    )
    assert heat.shape == (ds.Rows, ds.Columns, 3)

    reader = PdfReader(io.BytesIO((folder / f"{pid}_report.pdf").read_bytes()))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert pid in text
    assert doc["result"] in text
    assert "NOT FOR CLINICAL USE" in text
    assert predictor.bundle.name in text


def test_broken_files_are_skipped_with_reasons_and_others_processed(tmp_path, phantom_dir, predictor):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(min(phantom_dir.glob("*.dcm")), inp / "good.DCM")
    (inp / "empty.dcm").write_bytes(b"")
    (inp / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    shutil.copy(get_testdata_file("CT_small.dcm"), inp / "ct.dcm")
    shutil.copy(get_testdata_file("DICOMDIR"), inp / "dicomdir.dcm")
    (inp / "notes.txt").write_text("not a dicom")
    out = tmp_path / "out"
    out.mkdir()
    files = list(iter_dicom_files(inp))
    assert [f.name for f in files] == [
        "ct.dcm",
        "dicomdir.dcm",
        "empty.dcm",
        "good.DCM",
        "noise.dcm",
    ]
    records = [process_file(f, out, predictor, job_id="job-2") for f in files]
    summary = summarise(records, job_id="job-2", total=len(files))
    assert summary["processed"] == 1
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in summary["skipped"]}
    assert reasons == {
        "ct.dcm": "unsupported_modality",
        "dicomdir.dcm": "unsupported_image",
        "empty.dcm": "unreadable_dicom",
        "noise.dcm": "unreadable_dicom",
    }
    assert all(s["detail"] for s in summary["skipped"])


def test_same_patient_keeps_one_image_by_the_documented_rule(tmp_path, predictor):
    inp, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    _write_phantom(inp / "a.dcm", 0, patient_id="P1", acquisition="20260301120000")
    newest = _write_phantom(inp / "b.dcm", 1, patient_id="P1", acquisition="20260302080000")
    _write_phantom(inp / "c.dcm", 2, patient_id="P1", acquisition="20260101090000")
    # Process in an order where the winner is neither first nor last.
    records = [process_file(inp / n, out, predictor, job_id="job-3") for n in ("c.dcm", "b.dcm", "a.dcm")]
    summary = summarise(records, job_id="job-3", total=3)
    assert summary["processed"] == 3
    assert sorted(s["path"] for s in summary["superseded"]) == [
        str(inp / "a.dcm"),
        str(inp / "c.dcm"),
    ]
    folder = out / "P1"
    doc = json.loads((folder / "P1_predictions.json").read_text())
    assert doc["metadata"]["sop_instance_uid"] == str(newest.SOPInstanceUID)
    # Never a mix: every artifact of the folder belongs to the winning image.
    source = cv2.imdecode(np.frombuffer((folder / "P1_source_image.png").read_bytes(), np.uint8), 0)
    assert source.shape == (320, 320)
    pdf_text = PdfReader(folder / "P1_report.pdf").pages[0].extract_text()
    assert str(newest.SOPInstanceUID)[-12:] in pdf_text.replace("\n", "")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [".cxr-engine"]
    assert len(list(folder.iterdir())) == 5
    assert not any(p.name not in (".tmp", ".locks", "P1") for p in out.iterdir())


def test_instance_layout_keeps_every_image(tmp_path, predictor):
    inp, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    a = _write_phantom(inp / "a.dcm", 0, patient_id="P2")
    b = _write_phantom(inp / "b.dcm", 1, patient_id="P2")
    for name in ("a.dcm", "b.dcm"):
        assert process_file(inp / name, out, predictor, job_id="job-4", layout="instance")["status"] == "processed"
    for ds in (a, b):
        folder = out / "P2" / str(ds.SOPInstanceUID)
        assert (folder / "P2_predictions.json").is_file() and (folder / "P2_report.pdf").is_file()


# Writing the 1000-character id makes pydicom warn (LO allows 64): that is the point.
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
@pytest.mark.parametrize("hostile", ["../../etc/evil", "..", "/abs/path", "a\\..\\b", ".hidden", "x" * 1000])
def test_hostile_patient_ids_never_escape_the_output_folder(tmp_path, predictor, hostile):
    inp, out = tmp_path / "in", tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    _write_phantom(inp / "h.dcm", 3, patient_id=hostile)
    record = process_file(inp / "h.dcm", out, predictor, job_id="job-5")
    assert record["status"] == "processed", record
    folder = out.resolve() / record["folder"].rsplit("/", 1)[1]
    assert folder.parent == out.resolve() and not folder.name.startswith(".")
    assert len(folder.name) <= 64
    # Nothing was written anywhere but inside the output folder.
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {inp / "h.dcm"}
    assert all(out.resolve() in p.resolve().parents for p in written)
    doc = json.loads(next(folder.glob("*_predictions.json")).read_text())
    assert doc["metadata"]["patient_id"] == hostile  # the id itself is kept, only the folder name is sanitised


def test_unwritable_output_is_a_reasoned_skip(tmp_path, phantom_dir, predictor):
    """The staging area cannot be created (a file squats on ``.tmp``; tests run as root,
    so permissions would not stop a write): the file is skipped with a reason and no
    patient folder appears."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".tmp").write_text("squatter")
    record = process_file(min(phantom_dir.glob("*.dcm")), out, predictor, job_id="job-6")
    assert record["status"] == "skipped" and record["reason"] == "output_error" and record["stage"] == "publish"
    assert record["detail"] == "could not write the output folder (ENOTDIR: Not a directory)"
    assert sorted(p.name for p in out.iterdir()) == [".tmp"]


# ---------------------------------------------------------------- issue 15: ownership, data roots, jobs


def test_a_patient_id_naming_a_client_folder_or_file_never_replaces_it(tmp_path, predictor):
    """Item 1: ``patient_id: "victim"`` and ``patient_id: "<an input DICOM's name>"`` with
    the output folder set to the data root used to delete both; now each is an
    ``output_error`` skip naming the conflict, and everything is left as it was."""
    root = tmp_path / "root"
    src = root / "phantom_1000_00003.dcm"
    _write_phantom(src, 0, patient_id="P-ORIG")
    (root / "victim").mkdir()
    (root / "victim" / "notes.txt").write_text("the client's own notes")
    shutil.copy(src, root / "victim" / "study.dcm")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts}
    for override, conflict in (
        ("victim", "'victim' in the output folder is a folder the engine did not make (no .cxr-engine marker)"),
        ("phantom_1000_00003.dcm", "'phantom_1000_00003.dcm' in the output folder is a file"),
    ):
        record = process_file(src, root, predictor, job_id="job-v", patient_id_override=override, data_roots=[root])
        assert record["status"] == "skipped" and record["reason"] == "output_error", record
        assert record["stage"] == "publish" and record["detail"].startswith(conflict)
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts}
    assert after == before and src.is_file()


def test_worker_refuses_paths_outside_its_data_roots(tmp_path, phantom_dir, predictor):
    """Item 2: a task sent straight to the queue names any path; the worker checks its own roots."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    src = root / "in" / "a.dcm"
    shutil.copy(min(phantom_dir.glob("*.dcm")), src)
    record = process_file(src, outside, predictor, job_id="job-o", data_roots=[root])
    assert record["reason"] == "outside_data_roots" and record["stage"] == "publish"
    assert record["detail"] == "the output folder is outside this worker's data roots (CXR_DATA_ROOTS); refused"
    shutil.copy(src, outside / "b.dcm")
    record = process_file(outside / "b.dcm", root, predictor, job_id="job-o", data_roots=[root])
    assert record["reason"] == "outside_data_roots" and "the input file is outside" in record["detail"]
    assert list(outside.iterdir()) == [outside / "b.dcm"] and sorted(p.name for p in root.iterdir()) == ["in"]


def test_links_swapped_in_after_the_check_are_not_followed(tmp_path, phantom_dir, predictor):
    """Item 2: after the 202, the input became a link to an outside file and the output
    folder a link to an outside folder: neither is read nor written."""
    root, outside = (tmp_path / "root").resolve(), (tmp_path / "outside").resolve()
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(min(phantom_dir.glob("*.dcm")), outside / "secret.dcm")
    (root / "in" / "a.dcm").symlink_to(outside / "secret.dcm")
    (root / "out").mkdir()
    record = process_file(root / "in" / "a.dcm", root / "out", predictor, job_id="job-l", data_roots=[root])
    assert record["reason"] == "outside_data_roots" and "passes through a symbolic link" in record["detail"]
    (root / "in" / "a.dcm").unlink()
    shutil.copy(outside / "secret.dcm", root / "in" / "a.dcm")
    (root / "out").rmdir()
    (root / "out").symlink_to(outside)
    record = process_file(root / "in" / "a.dcm", root / "out", predictor, job_id="job-l", data_roots=[root])
    assert record["reason"] == "outside_data_roots" and record["stage"] == "publish"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.dcm"]
    (root / "out").unlink()
    (root / "out").mkdir()
    record = process_file(root / "in" / "a.dcm", root / "out", predictor, job_id="job-l", data_roots=[root])
    assert record["status"] == "processed" and record["path"] == str(root / "in" / "a.dcm"), record
    assert record["rank"][-1] == str(root / "in" / "a.dcm")  # the path, not /proc/self/fd/N


def test_rank_rule_and_summaries_hold_across_jobs(tmp_path, predictor):
    """Item 5: two jobs write one patient folder. The greater rank stays on disk whatever
    the order, and each summary says what the disk holds when it is written."""
    inp, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    _write_phantom(inp / "old.dcm", 0, patient_id="P5", acquisition="20250101120000")
    _write_phantom(inp / "new.dcm", 1, patient_id="P5", acquisition="20260101120000")
    _write_phantom(inp / "newer.dcm", 2, patient_id="P5", acquisition="20270101120000")

    def run_job(job_id, name):
        records = [process_file(inp / name, out, predictor, job_id=job_id)]
        owners = folder_owners(out, [r["folder"] for r in records if r["status"] == "processed"])
        return records[0], summarise(records, job_id=job_id, total=1, owners=owners)

    record_a, summary_a = run_job("job-a", "new.dcm")
    assert record_a["published"] and summary_a["superseded"] == []
    record_b, summary_b = run_job("job-b", "old.dcm")  # a later job, an older image
    assert record_b["status"] == "processed" and not record_b["published"]
    assert record_b["kept"] == str(inp / "new.dcm")
    assert summary_b["superseded"] == [
        {"path": str(inp / "old.dcm"), "folder": str(out / "P5"), "kept": str(inp / "new.dcm"), "kept_job_id": "job-a"}
    ]
    doc = json.loads((out / "P5" / "P5_predictions.json").read_text())
    assert doc["publication"]["job_id"] == "job-a" and doc["source"]["path"] == str(inp / "new.dcm")
    # Job A's summary, written again now (a redelivered callback): job C replaced its folder.
    run_job("job-c", "newer.dcm")
    owners = folder_owners(out, [record_a["folder"]])
    again = summarise([record_a], job_id="job-a", total=1, owners=owners)
    assert again["superseded"] == [
        {
            "path": str(inp / "new.dcm"),
            "folder": str(out / "P5"),
            "kept": str(inp / "newer.dcm"),
            "kept_job_id": "job-c",
        }
    ]


def test_operating_point_and_model_outputs_reach_the_json_and_the_pdf(
    tmp_path, phantom_dir, demo_bundle_dir, monkeypatch
):
    """``CXR_OPERATING_POINT`` picks the manifest's named thresholds; the point's name is
    in the JSON's model block and on the PDF; every model label is in model_outputs."""
    from inference.bundle import read_bundle
    from inference.predict import Predictor

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(demo_bundle_dir, bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["operating_points"] = {"high_sensitivity": {"thresholds": {label: 0.01 for label in LABELS}}}
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("CXR_OPERATING_POINT", "high_sensitivity")
    predictor = Predictor(read_bundle(bundle_dir))
    out = tmp_path / "out"
    out.mkdir()
    record = process_file(min(phantom_dir.glob("*.dcm")), out, predictor, job_id="job-op")
    assert record["status"] == "processed", record
    doc = json.loads(Path(record["outputs"]["predictions"]).read_text(encoding="utf-8"))
    assert doc["model"]["operating_point"] == "high_sensitivity"
    assert doc["model"]["clinical_status"] == "demo" and doc["model"]["manifest_schema"] == 2
    assert set(doc["thresholds"].values()) == {0.01}
    assert [o["label"] for o in doc["model_outputs"]] == list(LABELS)
    assert all(o["maps_to"] == o["label"] and o["threshold"] == 0.01 for o in doc["model_outputs"])
    assert all(f["assessed"] is True for f in doc["findings"])
    text = PdfReader(record["outputs"]["report"]).pages[0].extract_text()
    assert "operating point: high_sensitivity" in text and "NOT FOR CLINICAL USE" in text


def test_dicom_outputs_join_the_four_artifacts_and_carry_the_same_findings(tmp_path, phantom_dir, predictor):
    """``dicom_outputs``: three more files in the same folder, published with the other four;
    the SR's findings are the predictions JSON's, the SC has the source's size."""
    from reports.dicom_outputs import assessed_findings, read_sr_findings

    src = min(phantom_dir.glob("*.dcm"))
    ds = pydicom.dcmread(src)
    out = tmp_path / "out"
    out.mkdir()
    record = process_file(src, out, predictor, job_id="job-d", layout="instance", dicom_outputs=True)
    assert record["status"] == "processed" and "dicom_outputs_error" not in record, record
    folder = out / str(ds.PatientID) / str(ds.SOPInstanceUID)
    pid = str(ds.PatientID)
    suffixes = ("predictions.json", "heatmap.png", "source_image.png", "report.pdf", "sc.dcm", "sr.dcm")
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))  # .cxr-engine: the marker
    assert names == sorted([*(f"{pid}_{s}" for s in suffixes), f"{pid}_report_pdf.dcm"])
    assert record["outputs"]["dicom_sr"] == str(folder / f"{pid}_sr.dcm")
    doc = json.loads((folder / f"{pid}_predictions.json").read_text(encoding="utf-8"))
    assert read_sr_findings(pydicom.dcmread(folder / f"{pid}_sr.dcm")) == assessed_findings(doc)
    sc = pydicom.dcmread(folder / f"{pid}_sc.dcm")
    assert sc.pixel_array.shape == (ds.Rows, ds.Columns, 3) and sc.StudyInstanceUID == ds.StudyInstanceUID
    pdf = pydicom.dcmread(folder / f"{pid}_report_pdf.dcm")
    assert pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength] == (folder / f"{pid}_report.pdf").read_bytes()


def test_a_header_without_a_study_uid_keeps_the_four_artifacts(tmp_path, predictor):
    ds = _write_phantom(tmp_path / "in" / "nostudy.dcm", 0, size=256)
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "in" / "nostudy.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    out.mkdir()
    record = process_file(tmp_path / "in" / "nostudy.dcm", out, predictor, job_id="job-e", dicom_outputs=True)
    assert record["status"] == "processed", record
    assert "StudyInstanceUID" in record["dicom_outputs_error"]
    assert sorted(record["outputs"]) == ["heatmap", "predictions", "report", "source_image"]
