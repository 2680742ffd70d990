"""Bulk jobs end to end: API -> Redis -> real worker processes -> chord callback.

Each job's summary is checked file by file against what the inputs are: phantoms are
processed, real pydicom files are processed or refused with the right reason, broken
files are skipped with a reason and never stop the job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.support.service import WorkerProcess, copy_inputs, wait_for_job

ARTIFACTS = ("predictions.json", "heatmap.png", "source_image.png", "report.pdf")


def _bulk(client: Any, auth: dict[str, str], inp: Path, out: Path, **extra: Any) -> Any:
    return client.post(
        "/bulk_inference", headers=auth, json={"input_folder_path": str(inp), "output_folder_path": str(out), **extra}
    )


def _assert_patient_folder(folder: Path) -> dict[str, Any]:
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([".cxr-engine"] + [f"{folder.name}_{a}" for a in ARTIFACTS]), names
    doc = json.loads((folder / f"{folder.name}_predictions.json").read_text())
    assert (folder / f"{folder.name}_report.pdf").read_bytes().startswith(b"%PDF-")
    assert (folder / f"{folder.name}_heatmap.png").read_bytes().startswith(b"\x89PNG")
    return doc


def test_mixed_folder_completes_with_every_file_accounted_for(
    client: Any, auth: dict[str, str], worker: Any, data_root: Path, small_phantoms: Path
) -> None:
    inp, out = data_root / "mixed" / "in", data_root / "mixed" / "out"
    copy_inputs(small_phantoms, inp, ["phantom_777_00000.dcm", "phantom_777_00001.dcm"])
    nested = inp / "nested" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), nested / "rg1.DCM")  # a real CR chest radiograph
    shutil.copy(get_testdata_file("CT_small.dcm"), inp / "ct.dcm")  # real, but CT
    (inp / "empty.dcm").write_bytes(b"")
    (inp / "random.dcm").write_bytes(bytes(range(256)) * 8)
    whole = (small_phantoms / "phantom_777_00002.dcm").read_bytes()
    (inp / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    ds = pydicom.dcmread(small_phantoms / "phantom_777_00003.dcm")
    del ds.PatientID
    ds.save_as(inp / "no-patient-id.dcm")
    (inp / "readme.txt").write_text("not a .dcm name: never listed")

    response = _bulk(client, auth, inp, out)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["Result"], body["Message"]) == ("Success", "Bulk inference completed successfully.")
    summary = body["Data"]
    assert summary["status"] == "completed"
    assert summary["total"] == 8
    assert summary["processed"] == 3
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons == {
        "ct.dcm": "unsupported_modality",
        "empty.dcm": "unreadable_dicom",
        "random.dcm": "unreadable_dicom",
        "truncated.dcm": "unreadable_dicom",
        "no-patient-id.dcm": "missing_patient_id",
    }
    assert all(s["detail"] for s in summary["skipped"])
    assert summary["superseded"] == []
    assert summary["workers"] == [worker.name]

    assert {Path(p).name for p in summary["outputs"]} == {"phantom_777_00000.dcm", "phantom_777_00001.dcm", "rg1.DCM"}
    for src, folder in summary["outputs"].items():
        doc = _assert_patient_folder(Path(folder))
        assert doc["source"]["path"] == src
        assert Path(folder).parent == out
    # The summary file in the output folder is the same document the API answered with.
    on_disk = json.loads((out / ".jobs" / f"{summary['job_id']}.json").read_text())
    assert on_disk == summary
    assert summary["summary_file"] == str(out / ".jobs" / f"{summary['job_id']}.json")
    # The job's scratch keys are gone; the job record stays until it expires.
    from engine.jobstore import FILES_KEY, JOB_KEY, PATHS_KEY

    redis_client = client.application.extensions["cxr_redis"]
    assert not redis_client.exists(FILES_KEY.format(job_id=summary["job_id"]))
    assert not redis_client.exists(PATHS_KEY.format(job_id=summary["job_id"]))
    assert 0 < redis_client.ttl(JOB_KEY.format(job_id=summary["job_id"])) <= 7 * 86400


def test_async_job_is_polled_to_completion(
    client: Any, auth: dict[str, str], worker: Any, data_root: Path, small_phantoms: Path
) -> None:
    inp = copy_inputs(small_phantoms, data_root / "async" / "in")
    response = _bulk(client, auth, inp, data_root / "async" / "out", wait=False)
    assert response.status_code == 202
    body = response.get_json()
    assert (body["Result"], body["Message"]) == ("Success", "Bulk inference accepted.")
    job_id, status_url = body["Data"]["job_id"], body["Data"]["status_url"]
    assert status_url == f"/jobs/{job_id}"
    first = client.get(status_url, headers=auth).get_json()["Data"]
    assert first["status"] in ("queued", "running", "completed")
    assert first["total"] == 6
    final = wait_for_job(client, auth, status_url)
    assert final["Data"]["status"] == "completed"
    assert final["Data"]["processed"] == 6
    assert final["Message"] == "Job completed."


def test_wait_limit_answers_202_warning_and_the_job_carries_on(
    app: Any, auth: dict[str, str], worker: Any, data_root: Path, small_phantoms: Path
) -> None:
    inp = copy_inputs(small_phantoms, data_root / "limit" / "in")
    app.config["CXR_BULK_WAIT_S"] = 0.0
    try:
        response = _bulk(app.test_client(), auth, inp, data_root / "limit" / "out")
    finally:
        app.config["CXR_BULK_WAIT_S"] = 120.0
    assert response.status_code == 202
    body = response.get_json()
    assert body["Result"] == "Warning"
    assert body["Data"]["status_url"] == f"/jobs/{body['Data']['job_id']}"
    final = wait_for_job(app.test_client(), auth, body["Data"]["status_url"])
    assert final["Data"]["processed"] == 6


def test_instance_layout_keeps_every_image_of_a_patient(
    client: Any, auth: dict[str, str], worker: Any, data_root: Path, small_phantoms: Path
) -> None:
    inp = data_root / "instance" / "in"
    inp.mkdir(parents=True)
    uids = []
    for i, src in enumerate(sorted(small_phantoms.glob("*.dcm"))[:3]):
        ds = pydicom.dcmread(src)
        ds.PatientID = "SAME-PATIENT"
        ds.save_as(inp / f"img{i}.dcm")
        uids.append(ds.SOPInstanceUID)
    summary = _bulk(client, auth, inp, data_root / "instance" / "out", layout="instance").get_json()["Data"]
    assert summary["processed"] == 3 and summary["superseded"] == []
    patient = data_root / "instance" / "out" / "SAME-PATIENT"
    assert sorted(p.name for p in patient.iterdir()) == sorted([".cxr-engine", *uids])  # a marked container
    for uid in uids:
        assert _assert_patient_folder_named(patient / uid, "SAME-PATIENT")["metadata"]["sop_instance_uid"] == uid


def test_dicom_outputs_travel_through_the_bulk_and_single_requests(
    client: Any, auth: dict[str, str], worker: Any, data_root: Path, small_phantoms: Path
) -> None:
    """``dicom_outputs: true`` reaches the worker: SC, SR and PDF objects beside the four
    artifacts (bulk), and in base64 (single without ``save_to_disk``)."""
    import base64

    inp = copy_inputs(small_phantoms, data_root / "dcm-out" / "in", ["phantom_777_00000.dcm"])
    summary = _bulk(client, auth, inp, data_root / "dcm-out" / "out", dicom_outputs=True).get_json()["Data"]
    (folder,) = [Path(f) for f in summary["outputs"].values()]
    names = sorted(p.name for p in folder.iterdir())
    assert [n for n in names if n.endswith(".dcm")] == [
        f"{folder.name}_{s}" for s in ("report_pdf.dcm", "sc.dcm", "sr.dcm")
    ]
    sr = pydicom.dcmread(folder / f"{folder.name}_sr.dcm")
    assert sr.StudyInstanceUID == pydicom.dcmread(inp / "phantom_777_00000.dcm").StudyInstanceUID
    body = {"input_image_path": str(inp / "phantom_777_00000.dcm"), "save_to_disk": False, "dicom_outputs": True}
    data = client.post("/single_inference", json=body, headers=auth).get_json()["Data"]
    for kind in ("dicom_sc", "dicom_sr", "dicom_pdf"):
        assert base64.b64decode(data[kind])[128:132] == b"DICM", kind


def _assert_patient_folder_named(folder: Path, patient: str) -> dict[str, Any]:
    assert sorted(p.name for p in folder.iterdir()) == sorted([".cxr-engine"] + [f"{patient}_{a}" for a in ARTIFACTS])
    return json.loads((folder / f"{patient}_predictions.json").read_text())


def test_two_workers_share_a_job_and_one_patient_folder_stays_whole(
    client: Any,
    auth: dict[str, str],
    worker: WorkerProcess,
    second_worker: WorkerProcess,
    data_root: Path,
    tmp_path: Path,
) -> None:
    """Eight images of one patient, two workers publishing the same folder concurrently:
    the folder ends with exactly the greatest-rank image's four artifacts."""
    from demo.phantom_dicom import write_phantoms

    src = tmp_path / "src"
    write_phantoms(src, 8, seed=31, size=320)
    inp = data_root / "shared" / "in"
    inp.mkdir(parents=True)
    ranks = {}
    for i, f in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.PatientID = "ONE^PATIENT/../x"  # hostile too: must stay inside the output folder
        ds.AcquisitionDate, ds.AcquisitionTime = "20260101", f"0{i}0000"
        ds.save_as(inp / f.name)
        ranks[str(inp / f.name)] = ds.SOPInstanceUID
    out = data_root / "shared" / "out"
    summary = _bulk(client, auth, inp, out).get_json()["Data"]
    assert summary["processed"] == 8
    assert sorted(summary["workers"]) == sorted([worker.name, second_worker.name])
    winner = str(inp / max(src.glob("*.dcm")).name)  # latest acquisition time
    assert len(summary["superseded"]) == 7
    assert {s["kept"] for s in summary["superseded"]} == {winner}
    folders = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and folders[0].parent == out
    doc = _assert_patient_folder(folders[0])
    assert doc["metadata"]["sop_instance_uid"] == ranks[winner]
    assert doc["source"]["path"] == winner
    assert list((out / ".tmp").iterdir()) == []  # no staging folder left behind


@pytest.mark.parametrize("save", [True, False])
def test_single_inference(
    client: Any, auth: dict[str, str], worker: Any, data_root: Path, small_phantoms: Path, save: bool
) -> None:
    import base64

    src = copy_inputs(small_phantoms, data_root / f"single-{save}", ["phantom_777_00004.dcm"])
    body: dict[str, Any] = {
        "input_image_path": str(src / "phantom_777_00004.dcm"),
        "save_to_disk": save,
        "patient_id": "OVERRIDE 7",
    }
    if save:
        body["output_folder_path"] = str(data_root / f"single-{save}" / "out")
    response = client.post("/single_inference", json=body, headers=auth)
    assert response.status_code == 200, response.get_json()
    payload = response.get_json()
    assert (payload["Result"], payload["Message"]) == ("Success", "Inference completed successfully.")
    data = payload["Data"]
    assert {"result", "findings", "source_image", "heatmap", "report", "metadata"} <= set(data)
    assert data["result"] in ("TB Presumptive", "Abnormal", "Normal")
    assert [f["name"] for f in data["findings"]][:2] == ["Tuberculosis", "Cardiomegaly"]
    assert len(data["findings"]) == 11
    assert data["metadata"]["patient_id"] == "OVERRIDE 7"
    if save:
        folder = Path(data["source_image"]).parent
        assert folder.parent == data_root / "single-True" / "out"
        _assert_patient_folder(folder)
        assert Path(data["heatmap"]).is_file() and Path(data["report"]).is_file()
    else:
        assert base64.b64decode(data["source_image"]).startswith(b"\x89PNG")
        assert base64.b64decode(data["heatmap"]).startswith(b"\x89PNG")
        assert base64.b64decode(data["report"]).startswith(b"%PDF-")
        assert not (data_root / "single-False" / "out").exists()


def test_single_inference_refusals_from_the_worker(
    client: Any, auth: dict[str, str], worker: Any, data_root: Path, small_phantoms: Path
) -> None:
    base = data_root / "single-bad"
    base.mkdir()
    (base / "junk.dcm").write_bytes(b"\x00" * 300)
    ds = pydicom.dcmread(small_phantoms / "phantom_777_00005.dcm")
    ds.PatientID = ""
    ds.save_as(base / "blank-id.dcm")
    ds.PatientID = "P"
    ds.Modality = "MR"
    ds.save_as(base / "mr.dcm")
    expected = {
        "junk.dcm": (400, f"Invalid DICOM image, unable to fetch patient ID: {base / 'junk.dcm'}"),
        "blank-id.dcm": (400, f"Patient ID is empty or None: {base / 'blank-id.dcm'}"),
        "mr.dcm": (400, "Image cannot be processed (unsupported_modality): "),
    }
    for name, (status, message) in expected.items():
        response = client.post(
            "/single_inference",
            headers=auth,
            json={"input_image_path": str(base / name), "output_folder_path": str(base / "o")},
        )
        payload = response.get_json()
        assert response.status_code == status, payload
        assert payload["Message"].startswith(message), payload
        assert payload["Result"] == "Failure"
    assert not any((base / "o").iterdir())  # nothing published for refused files


def test_health_lists_the_worker(client: Any, auth: dict[str, str], worker: Any) -> None:
    response = client.get("/health", headers=auth)
    assert response.status_code == 200
    data = response.get_json()["Data"]
    assert data["broker"] == "ok"
    assert worker.name in data["workers"]
    assert set(data["queues"]) == {"single", "inference", "celery"}
