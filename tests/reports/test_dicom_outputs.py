"""The DICOM outputs (heatmap SC, TID 1500 SR, Encapsulated PDF): valid, linked to the
source's study, deterministic, and readable back through highdicom.

Sources are real files: phantoms (UTF-8 names in Cyrillic and Chinese) and pydicom's CR
chest radiograph RG1. Validation is dicom3tools' ``dciodvfy`` (installed by ``make test``, ``.ci/system-deps``
with Orthanc) plus pydicom/highdicom round trips.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from demo.phantom_dicom import write_phantoms
from inference.labels import LABELS
from reports.dicom_outputs import (
    DEMO_STATUS,
    DicomOutputError,
    assessed_findings,
    build_dicom_outputs,
    device_uid,
    encode_dataset,
    read_sr_findings,
    source_header,
)

SHA = "5e" * 32


def _document(model: dict[str, Any] | None = None) -> dict[str, Any]:
    findings = [
        {"name": label, "presence": i % 3 == 0, "confidence": round(0.05 + i * 0.0837, 4), "assessed": True}
        for i, label in enumerate(LABELS)
    ]
    return {
        "result": "Abnormal",
        "findings": findings,
        "model": model or {"name": "cxr-demo", "version": "0.3.1", "weights_sha256": SHA, "demo": True},
    }


def _overlay(rows: int, cols: int) -> np.ndarray:
    bgr = np.zeros((rows, cols, 3), dtype=np.uint8)
    bgr[..., 2] = 220  # pure red in BGR
    return bgr


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("dicom-out-src")
    write_phantoms(folder, 4, size=256, seed=77)
    return sorted(folder.glob("*.dcm")) + [Path(get_testdata_file("RG1_UNCR.dcm"))]


def _roundtrip(ds: pydicom.Dataset, folder: Path, name: str) -> tuple[Path, pydicom.Dataset]:
    path = folder / name
    path.write_bytes(encode_dataset(ds))
    return path, pydicom.dcmread(path)


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    assert tool, "dciodvfy (Debian package dicom3tools) is not installed: make test installs it (.ci/system-deps)"
    out = subprocess.run([tool, "-new", str(path)], check=False, capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_outputs_validate_and_join_the_source_study(sources: list[Path], tmp_path: Path) -> None:
    for src_path in sources:
        src = source_header(str(src_path))
        built = build_dicom_outputs(
            src, overlay_bgr=_overlay(200, 150), report_pdf=b"%PDF-1.4\n%%EOF\n", document=_document()
        )
        assert set(built) == {"dicom_sc", "dicom_sr", "dicom_pdf"}
        series = set()
        for kind, ds in built.items():
            path, back = _roundtrip(ds, tmp_path, f"{src_path.stem}_{kind}.dcm")
            assert _dciodvfy_errors(path) == [], (src_path.name, kind)
            # Linked: same patient and study, the source's character set, a new series.
            assert back.StudyInstanceUID == src.StudyInstanceUID
            assert back.PatientID == src.PatientID and str(back.PatientName) == str(src.PatientName)
            assert back.SpecificCharacterSet == src.SpecificCharacterSet
            assert back.SeriesInstanceUID != src.SeriesInstanceUID
            assert back.SOPInstanceUID.startswith("2.25.")
            assert back.SeriesDescription.endswith(" - " + DEMO_STATUS)
            (equipment,) = [item for item in back.ContributingEquipmentSequence if "DeviceUID" in item]
            assert equipment.ManufacturerModelName == "cxr-demo" and equipment.SoftwareVersions == "0.3.1"
            assert equipment.DeviceUID == device_uid(SHA)
            series.add(back.SeriesInstanceUID)
        assert len(series) == 3


def test_sc_is_an_rgb_image_of_the_source_size_pointing_at_the_source(sources: list[Path], tmp_path: Path) -> None:
    src_path = sources[-1]  # RG1: 1955 x 1841, larger than the overlay given
    src = source_header(str(src_path))
    sc = build_dicom_outputs(src, overlay_bgr=_overlay(300, 280), report_pdf=b"%PDF", document=_document())["dicom_sc"]
    _, back = _roundtrip(sc, tmp_path, "sc.dcm")
    assert back.PhotometricInterpretation == "YBR_FULL_422" and back.LossyImageCompression == "01"
    rgb = back.pixel_array  # decoded by pylibjpeg (JPEG baseline) and converted to RGB by pydicom
    assert rgb.shape == (src.Rows, src.Columns, 3)
    assert abs(int(rgb[..., 0].mean()) - 220) <= 6 and int(rgb[..., 2].mean()) <= 10  # red stays red
    ref = back.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    assert list(back.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert list(back.PatientOrientation) == list(src.PatientOrientation)


def test_sr_round_trips_through_highdicom_with_the_predictions(sources: list[Path], tmp_path: Path) -> None:
    doc = _document()
    src = source_header(str(sources[2]))  # a Cyrillic patient name in UTF-8
    sr = build_dicom_outputs(src, overlay_bgr=_overlay(64, 64), report_pdf=b"%PDF", document=doc)["dicom_sr"]
    _, back = _roundtrip(sr, tmp_path, "sr.dcm")
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.VerificationFlag == "UNVERIFIED"
    assert read_sr_findings(back) == assessed_findings(doc)
    parsed = hd.sr.Comprehensive3DSR.from_dataset(back)
    evidence = parsed.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert referenced == src.SOPInstanceUID


def test_pdf_is_encapsulated_whole(sources: list[Path], tmp_path: Path) -> None:
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF\n"  # odd length: padded on disk, length kept
    src = source_header(str(sources[0]))
    ds = build_dicom_outputs(src, overlay_bgr=_overlay(8, 8), report_pdf=pdf, document=_document())["dicom_pdf"]
    _, back = _roundtrip(ds, tmp_path, "pdf.dcm")
    assert back.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert back.EncapsulatedDocument[: back.EncapsulatedDocumentLength] == pdf
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.SourceInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_uids_are_deterministic_per_source_model_and_type(sources: list[Path]) -> None:
    src_a, src_b = (source_header(str(p)) for p in sources[:2])

    def uids(src: pydicom.Dataset, sha: str) -> dict[str, tuple[str, str]]:
        model = {"name": "m", "version": "1", "weights_sha256": sha, "demo": False, "clinical_status": "research only"}
        built = build_dicom_outputs(src, overlay_bgr=_overlay(8, 8), report_pdf=b"%PDF", document=_document(model))
        for ds in built.values():
            assert ds.SeriesDescription.endswith(" - RESEARCH ONLY")
        return {kind: (ds.SeriesInstanceUID, ds.SOPInstanceUID) for kind, ds in built.items()}

    first = uids(src_a, SHA)
    assert uids(src_a, SHA) == first  # a re-sent image: the same objects
    other_model = uids(src_a, "77" * 32)
    assert all(other_model[k][0] != first[k][0] and other_model[k][1] != first[k][1] for k in first)
    other_image = uids(src_b, SHA)
    if src_a.StudyInstanceUID == src_b.StudyInstanceUID:
        assert all(other_image[k][0] == first[k][0] for k in first)  # one series per study and type
    assert all(other_image[k][1] != first[k][1] for k in first)


def test_a_source_without_uids_is_refused_clearly(sources: list[Path]) -> None:
    src = source_header(str(sources[0]))
    del src.StudyInstanceUID
    with pytest.raises(DicomOutputError, match="StudyInstanceUID"):
        build_dicom_outputs(src, overlay_bgr=_overlay(8, 8), report_pdf=b"%PDF", document=_document())


def test_sr_holds_only_the_conditions_the_model_assesses(sources: list[Path], tmp_path: Path) -> None:
    """A bundle that maps its labels onto some of the 11 conditions: the others have no
    probability, and the SR leaves them out rather than report them absent."""
    doc = _document()
    for finding in doc["findings"][1::2]:
        finding.update(assessed=False, presence=False, confidence=None)
    src = source_header(str(sources[0]))
    sr = build_dicom_outputs(src, overlay_bgr=_overlay(64, 64), report_pdf=b"%PDF", document=doc)["dicom_sr"]
    _, back = _roundtrip(sr, tmp_path, "sr-partial.dcm")
    found = read_sr_findings(back)
    assert [f["name"] for f in found] == [f["name"] for f in doc["findings"][0::2]]
    assert found == assessed_findings(doc)
