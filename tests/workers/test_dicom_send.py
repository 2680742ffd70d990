"""Sending a job's DICOM outputs by C-STORE: to a real SCP (the engine's own node as the
receiving PACS), and to a closed port (retries with backoff, then ``dicom_send_error``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from demo.phantom_dicom import write_phantoms
from inference.labels import LABELS
from reports.dicom_outputs import DICOM_SUFFIXES, build_dicom_outputs, encode_dataset, source_header
from tests.support.orthanc import running_orthanc
from workers.dicom_node import TRANSFER_SYNTAXES
from workers.dicom_send import SendSettings, deliver, output_files

pytestmark = pytest.mark.service  # starts SCP threads


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two processed file records whose DICOM outputs exist, one superseded, one skipped."""
    folder = tmp_path_factory.mktemp("send")
    write_phantoms(folder / "src", 3, size=64, seed=3)
    doc = {
        "result": "Normal",
        "findings": [{"name": n, "presence": False, "confidence": 0.1} for n in LABELS],
        "model": {"name": "m", "version": "1", "weights_sha256": "ab" * 32, "demo": True},
    }
    out = []
    for i, src in enumerate(sorted((folder / "src").glob("*.dcm"))):
        built = build_dicom_outputs(
            source_header(str(src)), overlay_bgr=np.zeros((64, 64, 3), np.uint8), report_pdf=b"%PDF", document=doc
        )
        outputs = {}
        for kind, ds in built.items():
            path = folder / f"p{i}{DICOM_SUFFIXES[kind]}"
            path.write_bytes(encode_dataset(ds))
            outputs[kind] = str(path)
        out.append({"path": str(src), "status": "processed", "published": i != 2, "outputs": outputs})
    out.append({"path": "x.dcm", "status": "skipped", "reason": "unreadable_dicom"})
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_published_outputs_are_sent(records: list[dict[str, Any]]) -> None:
    assert len(output_files(records)) == 6  # 2 published records x 3 objects; the superseded one is not on offer


def test_outputs_arrive_at_a_real_scp(records: list[dict[str, Any]]) -> None:
    """A pynetdicom Storage SCP stands for the PACS (the engine's own node would drop its
    own objects); every object arrives, in its stored transfer syntax."""
    received: dict[str, str] = {}

    def on_store(event: Any) -> int:
        received[str(event.dataset.SOPInstanceUID)] = str(event.context.transfer_syntax)
        return 0

    ae = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    port = int(server.server_address[1])
    try:
        result = deliver(records, SendSettings(("PACS", "127.0.0.1", port), "CXR_ENGINE"), budget_s=30)
    finally:
        server.shutdown()
    assert result == {
        "dicom_send": {"status": "sent", "destination": f"PACS@127.0.0.1:{port}", "instances": 6, "attempts": 1}
    }
    sent = {
        str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f).file_meta.TransferSyntaxUID
        for f in output_files(records)
    }
    assert received == sent


def test_a_down_destination_ends_as_dicom_send_error_after_the_retries(records: list[dict[str, Any]]) -> None:
    port = _closed_port()
    slept: list[float] = []
    settings = SendSettings(("PACS", "127.0.0.1", port), "CXR_ENGINE", retries=2, backoff_s=0.5)
    result = deliver(records, settings, budget_s=60, sleep=slept.append)
    assert slept == [0.5, 1.0]
    assert result["dicom_send"] == {
        "status": "failed",
        "destination": f"PACS@127.0.0.1:{port}",
        "instances": 6,
        "attempts": 3,
    }
    assert result["dicom_send_error"].startswith(
        f"6 DICOM object(s) not sent to PACS@127.0.0.1:{port} after 3 attempt(s)"
    )
    # The budget (half the callback's soft time limit) stops the retries early.
    slept.clear()
    assert deliver(records, settings, budget_s=0.1, sleep=slept.append)["dicom_send"]["attempts"] == 1
    assert slept == []


def test_stow_rs_to_orthanc_dicomweb(records: list[dict[str, Any]], tmp_path: Path) -> None:
    """``CXR_DICOMWEB_URL``: the same objects by STOW-RS (dicomweb-client) into a real
    Orthanc with its DICOMweb plugin; a wrong root ends as ``dicom_send_error``."""
    with running_orthanc(tmp_path / "orthanc", {}, dicomweb=True) as orthanc:
        result = deliver(records, SendSettings(dicomweb_url=orthanc.dicomweb_url, retries=0), budget_s=60)
        assert result == {
            "dicomweb_send": {"status": "sent", "destination": orthanc.dicomweb_url, "instances": 6, "attempts": 1}
        }
        stored = {orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances")}
        assert stored == {str(pydicom.dcmread(f).SOPInstanceUID) for f in output_files(records)}
        wrong = deliver(records, SendSettings(dicomweb_url=orthanc.url + "/no-such-root", retries=0), budget_s=60)
    assert wrong["dicomweb_send"]["status"] == "failed" and "HTTPError" in wrong["dicom_send_error"]


def test_nothing_to_send_adds_nothing(records: list[dict[str, Any]]) -> None:
    assert deliver(records, SendSettings(None), budget_s=5) == {}
    assert deliver(records[3:], SendSettings(("PACS", "127.0.0.1", 1)), budget_s=5) == {}
