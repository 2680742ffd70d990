"""End to end against a real PACS: Orthanc sends a study to the engine's DICOM node, a real
worker processes it, and the results come back into the same study in Orthanc.

Orthanc (Debian ``orthanc``) runs on free ports with a config written by the test
(``tests/support/orthanc.py``); the node runs in-process on a free port and submits
through the real Celery path to a worker started here (its own Redis database, ``pacs``:
this worker sends to Orthanc, the session's worker does not). Inputs: two phantoms and
pydicom-data's chest radiograph RG1, uncompressed and JPEG 2000, made one study.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import redis
from pydicom.data import get_testdata_file
from pynetdicom import AE

from demo.phantom_dicom import write_phantoms
from engine.jobstore import JobStore
from reports.dicom_outputs import DEMO_STATUS, assessed_findings, read_sr_findings
from tests.support.orthanc import Orthanc, free_port, running_orthanc
from tests.support.service import WorkerProcess, redis_db_url, worker_env
from workers.app import create_celery_app
from workers.dicom_node import DicomNode, NodeSettings, celery_submitter, model_key

pytestmark = pytest.mark.service

STABLE_S = 1.0
NODE_AE = "CXR_TEST"
URL = redis_db_url("pacs")


class Submitted:
    """The node's submitter, recording each job id with when it was sent."""

    def __init__(self, output: Path) -> None:
        self.real = celery_submitter(URL, output)
        self.jobs: list[tuple[str, float, int]] = []

    def __call__(self, study: str, files: list[Path]) -> str:
        job_id = self.real(study, files)
        self.jobs.append((job_id, time.monotonic(), len(files)))
        return job_id


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("pacs")
    client = redis.Redis.from_url(URL)
    client.flushdb()
    node_port = free_port()
    with running_orthanc(root / "orthanc", {"cxr": [NODE_AE, "127.0.0.1", node_port]}) as orthanc:
        env = worker_env(
            URL,
            CXR_DICOM_DESTINATION=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
            CXR_DICOM_AE_TITLE=NODE_AE,
            CXR_DICOM_SEND_RETRIES="2",
            CXR_DICOM_SEND_BACKOFF_S="0.3",
        )
        worker = WorkerProcess("pacs", root / "worker.log", env)
        submitted = Submitted(root / "results")
        settings = NodeSettings(
            ae_title=NODE_AE,
            host="127.0.0.1",
            port=node_port,
            stable_s=STABLE_S,
            spool=root / "spool",
            output=root / "results",
        )
        node = DicomNode(settings, submitted, model_key())
        try:
            worker.wait_ready(create_celery_app(URL))
            node.start()
            yield {"orthanc": orthanc, "node": node, "submitted": submitted, "root": root}
        finally:
            node.stop()
            worker.stop()
            client.flushdb()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two phantoms and RG1 (uncompressed and JPEG 2000) as one study of one patient."""
    folder = tmp_path_factory.mktemp("pacs-study")
    write_phantoms(folder / "ph", 2, size=256, seed=404)
    sources = [*sorted((folder / "ph").glob("*.dcm")), Path(get_testdata_file("RG1_UNCR.dcm"))]
    sources.append(Path(get_testdata_file("RG1_J2KR.dcm")))
    first = pydicom.dcmread(sources[0])
    files = []
    for i, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.PatientID, ds.PatientName = first.StudyInstanceUID, first.PatientID, first.PatientName
        ds.SpecificCharacterSet = first.SpecificCharacterSet
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[first.StudyInstanceUID, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"in{i}.dcm")
        files.append(folder / f"in{i}.dcm")
    return files


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _series_by_description(orthanc: Orthanc, study_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for series in orthanc.get(f"/studies/{study_id}/series"):
        description = series["MainDicomTags"].get("SeriesDescription", "")
        out[description] = series["Instances"]
    return out


def _summary(job_id: str) -> dict[str, Any]:
    store = JobStore.from_url(URL)
    progress = _wait(lambda: (p := store.progress(job_id)) is not None and p.finished and p, 180, f"job {job_id}")
    return dict(progress.summary)


def test_a_study_sent_by_orthanc_comes_back_as_sc_sr_and_pdf_series(pacs: dict[str, Any], study: list[Path]) -> None:
    orthanc, submitted = pacs["orthanc"], pacs["submitted"]
    uploaded = [orthanc.upload(f) for f in study]
    study_id = uploaded[0]["ParentStudy"]
    assert {u["ParentStudy"] for u in uploaded} == {study_id}
    orthanc.post("/modalities/cxr/store", {"Resources": [study_id], "Synchronous": True})
    last_instance = time.monotonic()

    expected = len(study)
    titles = ("AI heatmap", "AI findings", "AI report")

    def complete() -> dict[str, list[str]] | None:
        series = _series_by_description(orthanc, study_id)
        ours = {t: series.get(f"{t} - {DEMO_STATUS}", []) for t in titles}
        return series if all(len(v) == expected for v in ours.values()) else None

    try:
        series = _wait(complete, 180, "the SC, SR and PDF series in Orthanc")
    except AssertionError as exc:
        store = JobStore.from_url(URL)
        states = [(j, store.progress(j)) for j, _, _ in submitted.jobs]
        raise AssertionError(
            f"{exc}; jobs: {states}; series: {list(_series_by_description(orthanc, study_id))}; "
            f"Orthanc log: {orthanc.log.read_text(errors='replace')[-1500:]}"
        ) from None
    in_orthanc = time.monotonic()
    (job_id, _, count), *_ = submitted.jobs
    assert count == expected and len(submitted.jobs) == 1
    summary = _summary(job_id)
    assert summary["processed"] == expected and summary["skipped"] == []
    assert summary["dicom_send"] == {
        "status": "sent",
        "destination": f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        "instances": 3 * expected,
        "attempts": 1,
    }
    assert "dicom_send_error" not in summary

    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in study}
    folders = {Path(folder).name: Path(folder) for folder in summary["outputs"].values()}  # layout instance: <sop>
    sizes: dict[str, list[int]] = {t: [] for t in titles}
    for instance in series[f"AI findings - {DEMO_STATUS}"]:
        raw = orthanc.get(f"/instances/{instance}/file")
        sizes["AI findings"].append(len(raw))
        sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
        source_uid = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        source_uid = source_uid.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        folder = folders[source_uid]
        doc = json.loads(next(folder.glob("*_predictions.json")).read_text(encoding="utf-8"))
        assert read_sr_findings(sr) == assessed_findings(doc)
        assert sr.StudyInstanceUID == doc["source"]["study_instance_uid"]
    for instance in series[f"AI heatmap - {DEMO_STATUS}"]:
        raw = orthanc.get(f"/instances/{instance}/file")
        sizes["AI heatmap"].append(len(raw))
        sc = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
        source = pydicom.dcmread(sources[sc.SourceImageSequence[0].ReferencedSOPInstanceUID], stop_before_pixels=True)
        assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)
        assert orthanc.get(f"/instances/{instance}/preview")[:4] == b"\x89PNG"  # Orthanc opens it too
    for instance in series[f"AI report - {DEMO_STATUS}"]:
        raw = orthanc.get(f"/instances/{instance}/file")
        sizes["AI report"].append(len(raw))
        pdf = pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw))
        assert pdf.EncapsulatedDocument.startswith(b"%PDF-")
    latency = in_orthanc - last_instance - STABLE_S
    print(f"\nlast instance -> results in Orthanc: {latency:.1f} s (stable wait of {STABLE_S:g} s excluded)")
    for title, values in sizes.items():
        print(f"{title}: {min(values) / 1024:.0f}-{max(values) / 1024:.0f} KiB per image")


def test_re_sending_the_study_creates_nothing_new(pacs: dict[str, Any], study: list[Path]) -> None:
    """The whole study again, our own 12 objects included: they are answered success and
    dropped, the sources were already processed by this model: no job, no new object."""
    orthanc, submitted, node = pacs["orthanc"], pacs["submitted"], pacs["node"]
    study_id = orthanc.upload(study[0])["ParentStudy"]
    before = orthanc.get(f"/studies/{study_id}/instances")
    jobs, ignored = len(submitted.jobs), node.ignored
    orthanc.post("/modalities/cxr/store", {"Resources": [study_id], "Synchronous": True})
    time.sleep(STABLE_S * 3)
    assert len(submitted.jobs) == jobs
    assert node.ignored - ignored == 3 * len(study)
    assert len(orthanc.get(f"/studies/{study_id}/instances")) == len(before)


def test_a_down_destination_gives_dicom_send_error_and_keeps_the_artifacts(
    pacs: dict[str, Any], tmp_path: Path
) -> None:
    orthanc, node, submitted = pacs["orthanc"], pacs["node"], pacs["submitted"]
    orthanc.stop()
    write_phantoms(tmp_path, 1, size=256, seed=405)
    (src,) = tmp_path.glob("*.dcm")
    ae = AE(ae_title=NODE_AE)
    ds = pydicom.dcmread(src)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    jobs = len(submitted.jobs)
    _wait(lambda: len(submitted.jobs) > jobs, 30, "the node's job")
    summary = _summary(submitted.jobs[-1][0])
    assert summary["status"] == "completed" and summary["processed"] == 1
    assert summary["dicom_send"]["status"] == "failed" and summary["dicom_send"]["attempts"] == 3
    assert "not sent to ORTHANC@127.0.0.1" in summary["dicom_send_error"]
    (folder,) = [Path(f) for f in summary["outputs"].values()]
    artifacts = [p for p in folder.iterdir() if not p.name.startswith(".") and p.stat().st_size > 0]
    assert len(artifacts) == 7, artifacts  # the four artifacts and the three DICOM objects
