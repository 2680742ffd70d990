"""``cxr dicom-node``: the Storage SCP, its spool and its study timer, over real DICOM
associations (pynetdicom as the sending PACS) with real files; and one study submitted
through the real Celery path to the session's worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from demo.phantom_dicom import write_phantoms
from workers.dicom_node import (
    STATUS_OUT_OF_RESOURCES,
    AllowEntry,
    DicomNode,
    NodeConfigError,
    NodeSettings,
    Spool,
    StudyTimer,
    parse_allowed,
    parse_destination,
    set_nodelay,
)

pytestmark = pytest.mark.service  # starts SCP threads; one test uses the session worker

MODEL = "0123456789abcdef"


class Recorder:
    """A ``submit`` that records what the node would send as a job."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, list[str]]] = []

    def __call__(self, study: str, files: list[Path]) -> str:
        self.jobs.append((study, sorted(p.name for p in files)))
        return f"job-{len(self.jobs)}"


def _node(tmp_path: Path, submit: Any, **overrides: Any) -> DicomNode:
    fields: dict[str, Any] = {"stable_s": 0.6, **overrides}
    settings = NodeSettings(
        ae_title="CXR_TEST", host="127.0.0.1", port=0, spool=tmp_path / "spool", output=tmp_path / "results", **fields
    )
    return DicomNode(settings, submit, MODEL)


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[DicomNode, Recorder]]:
    recorder = Recorder()
    node = _node(tmp_path, recorder)
    node.start()
    yield node, recorder
    node.stop()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four phantoms of one study (CR/DX, uncompressed and JPEG 2000), RG1 in its JPEG 2000
    form moved into that study, and a CT slice moved into it too."""
    folder = tmp_path_factory.mktemp("node-study")
    write_phantoms(folder, 4, size=256, seed=91)
    files = sorted(folder.glob("phantom_*.dcm"))
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    for name, src in (("rg1_j2k.dcm", "RG1_J2KR.dcm"), ("ct.dcm", "CT_small.dcm")):
        ds = pydicom.dcmread(get_testdata_file(src))
        ds.StudyInstanceUID = study_uid
        ds.save_as(folder / name)
        files.append(folder / name)
    for f in files[:4]:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = study_uid
        ds.save_as(f)
    return files


def _send(port: int, files: list[Path], calling: str = "PACS") -> list[int]:
    """C-STORE each file over one association; the statuses (association refused: [])."""
    ae = AE(ae_title=calling)
    contexts = {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID for f in files}
    tsyntaxes = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files}
    for sop_class in contexts:
        for ts in tsyntaxes:
            ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TEST")
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()


def _wait(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_settings_parsing() -> None:
    assert parse_allowed(" PACS1, MOD@10.0.0.7 ,") == (AllowEntry("PACS1"), AllowEntry("MOD", "10.0.0.7"))
    assert parse_destination("ORTHANC@pacs.local:4242") == ("ORTHANC", "pacs.local", 4242)
    with pytest.raises(NodeConfigError, match="AE@host:port"):
        parse_destination("ORTHANC:4242")
    with pytest.raises(NodeConfigError, match="must lie under CXR_DATA_ROOTS"):
        NodeSettings.from_env({"CXR_DATA_ROOTS": "/srv/data", "CXR_DICOM_SPOOL": "/tmp/elsewhere"})
    env = {"CXR_DATA_ROOTS": "/srv/data", "CXR_DICOM_PORT": "104", "CXR_DICOM_STABLE_S": "1.5"}
    settings = NodeSettings.from_env(env)
    assert (settings.port, settings.stable_s, settings.ae_title) == (104, 1.5, "CXR_ENGINE")
    assert settings.spool == Path("/srv/data/dicom-spool") and settings.output == Path("/srv/data/dicom-results")


def test_spool_is_atomic_idempotent_and_keeps_a_ledger_per_model(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.store("1.2.3", "1.2.3.4", b"first") is True
    assert spool.store("1.2.3", "1.2.3.4", b"second") is False  # a re-send keeps the first file
    assert (tmp_path / "1.2.3" / "1.2.3.4.dcm").read_bytes() == b"first"
    assert list((tmp_path / ".tmp").iterdir()) == []
    with pytest.raises(ValueError):
        spool.store("../../etc", "1.2", b"x")
    spool.store("1.2.3", "1.2.3.5", b"x")
    spool.mark_submitted("1.2.3", "modelA", spool.pending("1.2.3", "modelA")[:1])
    assert [p.name for p in spool.pending("1.2.3", "modelA")] == ["1.2.3.5.dcm"]
    assert len(spool.pending("1.2.3", "modelB")) == 2  # a new model sees every instance again


def test_study_timer_hands_out_quiet_studies_once() -> None:
    now = [100.0]
    timer = StudyTimer(30.0, clock=lambda: now[0])
    timer.touch("a")
    now[0] = 120.0
    timer.touch("b")
    assert timer.due() == []
    now[0] = 130.0
    assert timer.due() == ["a"]
    now[0] = 149.0
    timer.touch("b")  # a new instance restarts the quiet period
    now[0] = 170.0
    assert timer.due() == []
    now[0] = 179.0
    assert timer.due() == ["b"] and timer.due() == []


def test_a_study_is_stored_then_submitted_once_when_quiet(running: Any, study: list[Path], tmp_path: Path) -> None:
    node, recorder = running
    statuses = _send(node.port, study)
    assert statuses == [0] * len(study)  # the CT slice too: answered success, the engine skips it
    study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
    spooled = sorted(p.name for p in (tmp_path / "spool" / study_uid).glob("*.dcm"))
    expected = sorted(f"{pydicom.dcmread(f).SOPInstanceUID}.dcm" for f in study)
    assert spooled == expected
    # Byte for byte what was sent (dataset part; the file meta is the node's).
    sent = pydicom.dcmread(study[1])
    kept = pydicom.dcmread(tmp_path / "spool" / study_uid / f"{sent.SOPInstanceUID}.dcm")
    assert kept.PixelData == sent.PixelData and kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert recorder.jobs == []  # not before the study is quiet
    assert _wait(lambda: recorder.jobs, timeout=10)
    assert recorder.jobs == [(study_uid, expected)]

    # Re-sending the study: same files, no new job.
    assert _send(node.port, study) == [0] * len(study)
    time.sleep(1.5)
    assert len(recorder.jobs) == 1
    # A new instance of the same study: a second job, for it alone.
    extra = pydicom.dcmread(study[0])
    extra.SOPInstanceUID = pydicom.uid.generate_uid()
    extra.save_as(tmp_path / "late.dcm")
    assert _send(node.port, [tmp_path / "late.dcm"]) == [0]
    assert _wait(lambda: len(recorder.jobs) == 2, timeout=10)
    assert recorder.jobs[1] == (study_uid, [f"{extra.SOPInstanceUID}.dcm"])


def test_echo_allow_list_and_disk_errors(tmp_path: Path, study: list[Path]) -> None:
    recorder = Recorder()
    node = _node(tmp_path, recorder, allowed=(AllowEntry("PACS"), AllowEntry("MODALITY", "10.9.9.9")))
    node.start()
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_TEST")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        for calling in ("INTRUDER", "MODALITY"):  # MODALITY is allowed from 10.9.9.9 only
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_TEST")
            assert assoc.is_rejected and not assoc.is_established, calling
        assert _send(node.port, study[:1], calling="INTRUDER") == []
        # A study folder that cannot be made (a file is in the way): failure, never success.
        study_uid = pydicom.dcmread(study[0]).StudyInstanceUID
        (tmp_path / "spool" / study_uid).write_bytes(b"in the way")
        assert _send(node.port, study[:1]) == [STATUS_OUT_OF_RESOURCES]
    finally:
        node.stop()
    assert recorder.jobs == [] and node.stored == 0


def test_two_hundred_small_images_throughput(tmp_path: Path) -> None:
    """The node's receive-and-store rate (docs/pacs.md): 200 small files over one association."""
    folder = tmp_path / "small"
    write_phantoms(folder, 4, size=64, seed=5, compression="none")
    template = pydicom.dcmread(min(folder.glob("*.dcm")))
    files = []
    for i in range(200):
        template.SOPInstanceUID = f"1.2.826.0.1.3680043.10.1.{i + 1}"
        path = folder / f"copy_{i:03d}.dcm"
        template.save_as(path)
        files.append(path)
    recorder = Recorder()
    node = _node(tmp_path, recorder, stable_s=60.0)
    node.start()
    try:
        ae = AE(ae_title="PACS")
        ae.requested_contexts = StoragePresentationContexts[:100]
        # TCP_NODELAY on the sender, as DCMTK and Orthanc do (pynetdicom leaves Nagle on).
        handlers = [(evt.EVT_CONN_OPEN, lambda event: set_nodelay(event.assoc))]
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_TEST", evt_handlers=handlers)
        start = time.perf_counter()
        statuses = [int(assoc.send_c_store(f).Status) for f in files]
        elapsed = time.perf_counter() - start
        assoc.release()
    finally:
        node.stop()
    assert statuses == [0] * 200 and node.stored == 200
    assert len(list((tmp_path / "spool" / template.StudyInstanceUID).glob("*.dcm"))) == 200
    print(f"\n200 instances received and stored (fsync'd) in {elapsed:.2f} s: {200 / elapsed:.0f} images/s")


def test_a_study_reaches_the_worker_and_the_ct_slice_is_skipped(
    worker: Any, data_root: Path, study: list[Path]
) -> None:
    """The node's job goes through the real Celery path: records in Redis, DICOM outputs
    on disk for the radiographs, ``unsupported_modality`` for the CT slice."""
    from engine.jobstore import JobStore
    from tests.support.service import REDIS_TEST_URL
    from workers.dicom_node import celery_submitter

    output = data_root / "node-results"
    settings = NodeSettings(
        ae_title="CXR_TEST", host="127.0.0.1", port=0, stable_s=0.5, spool=data_root / "node-spool", output=output
    )
    real, submitted = celery_submitter(REDIS_TEST_URL, output), []

    def submit(study_uid: str, files: list[Path]) -> str:
        submitted.append(real(study_uid, files))
        return submitted[-1]

    node = DicomNode(settings, submit, MODEL)
    node.start()
    try:
        picked = [study[0], study[1], study[-1]]  # two phantoms and the CT slice
        assert _send(node.port, picked) == [0, 0, 0]
        assert _wait(lambda: submitted, timeout=15)
    finally:
        node.stop()
    store = JobStore.from_url(REDIS_TEST_URL)
    (job_id,) = submitted
    progress = _wait(lambda: (p := store.progress(job_id)) and p.finished and p, timeout=120)
    summary = progress.summary
    assert summary["total"] == 3 and summary["processed"] == 2, summary
    assert [s["reason"] for s in summary["skipped"]] == ["unsupported_modality"]
    for folder in summary["outputs"].values():
        names = [p.name for p in Path(folder).glob("*.dcm")]
        assert sorted(n.rsplit("_", 1)[1] for n in names) == ["pdf.dcm", "sc.dcm", "sr.dcm"], names
