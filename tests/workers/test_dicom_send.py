"""Sending a job's DICOM outputs by C-STORE: to a real SCP (the engine's own node as the
receiving PACS), and to a closed port (retries with backoff, then ``dicom_send_error``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from demo.phantom_dicom import write_phantoms
from inference.labels import LABELS
from reports.dicom_outputs import DICOM_SUFFIXES, build_dicom_outputs, encode_dataset, source_header
from workers.dicom_node import DicomNode, NodeSettings
from workers.dicom_send import SendSettings, deliver, output_files

pytestmark = pytest.mark.service  # starts an SCP thread


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


def test_outputs_arrive_at_a_real_scp(records: list[dict[str, Any]], tmp_path: Path) -> None:
    received: list[tuple[str, list[Path]]] = []
    settings = NodeSettings(
        ae_title="PACS", host="127.0.0.1", port=0, stable_s=0.2, spool=tmp_path / "s", output=tmp_path / "o"
    )
    node = DicomNode(settings, lambda study, files: received.append((study, files)) or "job", "m")
    node.start()
    try:
        result = deliver(records, SendSettings(("PACS", "127.0.0.1", node.port), "CXR_ENGINE"), budget_s=30)
    finally:
        node.stop()
    assert result == {
        "dicom_send": {"status": "sent", "destination": f"PACS@127.0.0.1:{node.port}", "instances": 6, "attempts": 1}
    }
    stored = {p.stem for p in (tmp_path / "s").rglob("*.dcm")}
    assert stored == {str(pydicom.dcmread(f).SOPInstanceUID) for f in output_files(records)}


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


def test_nothing_to_send_adds_nothing(records: list[dict[str, Any]]) -> None:
    assert deliver(records, SendSettings(None), budget_s=5) == {}
    assert deliver(records[3:], SendSettings(("PACS", "127.0.0.1", 1)), budget_s=5) == {}
