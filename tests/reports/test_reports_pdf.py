"""reports.pdf: the report, read back with pypdf."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pypdf import PdfReader

from inference.image import PatientInfo
from reports.images import png_stream
from reports.pdf import DEMO_DISCLAIMER, READER_DISCLAIMER, TITLE, render_report_pdf
from reports.pdf_fonts import (
    CORE_RANGES,
    FALLBACK_FONTS_ENV,
    FONT_DIR,
    fallback_font_paths,
)
from reports.predictions import LABELS

Pngs = tuple[bytes, bytes]
MakeDoc = Callable[..., dict[str, Any]]


def decode_png(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)


def render_text(doc: dict[str, Any], pngs: Pngs) -> tuple[PdfReader, str]:
    data = render_report_pdf(doc, *pngs, generated_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc))
    assert data.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(data))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


@pytest.fixture(scope="module")
def sample(make_doc: MakeDoc, report_pngs: Pngs) -> tuple[PdfReader, str]:
    return render_text(make_doc(confidences=[0.9] + [0.1] * 10), report_pngs)


def test_report_text_has_every_required_part(sample: tuple[PdfReader, str]) -> None:
    reader, text = sample
    assert len(reader.pages) == 1
    assert reader.pages[0].mediabox.width == pytest.approx(595.28, abs=0.5)  # A4 portrait
    for expected in [
        TITLE,
        "PAT-00123",
        "Doe, Jane",
        "045Y",
        "2024-01-31",
        "1.2.826.0.1.3680043.8.498.1",
        "TB Presumptive",
        "cxr-demo-densenet",
        "0.3.1",
        "0123456789ab",
        DEMO_DISCLAIMER,
        READER_DISCLAIMER,
        "Page 1/1",
        "Generated 2024-05-06 07:08:09 UTC",
        "90.0 %",
        "40 %",
    ]:
        assert expected in text, expected
    for label in LABELS:
        assert label in text, label


def test_report_embeds_both_images(sample: tuple[PdfReader, str]) -> None:
    reader, _ = sample
    assert sum(len(page.images) for page in reader.pages) == 2


def test_non_demo_model_has_no_demo_disclaimer(make_doc: MakeDoc, report_pngs: Pngs) -> None:
    model = {
        "name": "cxr-prod",
        "version": "2.0",
        "sha256": "f" * 64,
        "intended_use": "Triage support",
    }
    _, text = render_text(make_doc(model=model, confidences=[0.0] * 11), report_pngs)
    assert DEMO_DISCLAIMER not in text and READER_DISCLAIMER in text
    assert "Normal" in text


@pytest.mark.parametrize("name", ["Иванов Иван", "Παπαδόπουλος Γιώργος"])
def test_cyrillic_and_greek_names_round_trip(
    name: str,
    make_doc: MakeDoc,
    patient_factory: Callable[..., PatientInfo],
    report_pngs: Pngs,
) -> None:
    _, text = render_text(make_doc(patient=patient_factory(patient_name=name)), report_pngs)
    assert name in text


def test_cjk_and_unusual_names_never_crash(
    make_doc: MakeDoc,
    patient_factory: Callable[..., PatientInfo],
    report_pngs: Pngs,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "李^雷=リ^レイ 😀 \u202e\x00" + "W" * 200
    patient = patient_factory(patient_name=name, patient_id="李雷-{nb}", sop_instance_uid="9" * 64)
    with caplog.at_level(logging.WARNING):
        _, text = render_text(make_doc(patient=patient), report_pngs)
    assert not [r for r in caplog.records if "missing the following glyphs" in r.getMessage()]
    if not fallback_font_paths():  # no CJK font on this machine: replacement characters
        assert "\ufffd" in text
    assert "{ nb}" in text  # the page-count alias in a value is not expanded


def test_fallback_font_from_environment(
    monkeypatch: pytest.MonkeyPatch,
    make_doc: MakeDoc,
    report_pngs: Pngs,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(
        FALLBACK_FONTS_ENV,
        f"{tmp_path / 'missing.ttf'}:{FONT_DIR / 'DejaVuSans-Bold.ttf'}",
    )
    fallback_font_paths.cache_clear()
    try:
        assert FONT_DIR / "DejaVuSans-Bold.ttf" in fallback_font_paths()
        _, text = render_text(make_doc(), report_pngs)
        assert "PAT-00123" in text
    finally:
        fallback_font_paths.cache_clear()


def test_successive_reports_are_independent(
    make_doc: MakeDoc, patient_factory: Callable[..., PatientInfo], report_pngs: Pngs
) -> None:
    first = patient_factory(patient_name="Alpha^Anna", patient_id="FIRST-111")
    second = patient_factory(patient_name="Beta^Bob", patient_id="SECOND-222")
    _, text_one = render_text(make_doc(patient=first), report_pngs)
    _, text_two = render_text(make_doc(patient=second), report_pngs)
    assert "FIRST-111" in text_one and "Alpha" in text_one
    assert "SECOND-222" in text_two and "FIRST-111" not in text_two and "Alpha" not in text_two
    assert "Page 1/1" in text_two


def _embedded_pixels(pdf: bytes) -> list[np.ndarray]:
    reader = PdfReader(io.BytesIO(pdf))
    return [np.asarray(image.image) for page in reader.pages for image in page.images]


def test_embedded_images_are_the_pngs_pixels(make_doc: MakeDoc, report_pngs: Pngs) -> None:
    """The PNGs' own streams go into the PDF: decoding them gives exactly the PNG pixels."""
    source, heatmap = report_pngs
    pdf = render_report_pdf(make_doc(), source, heatmap)
    embedded = _embedded_pixels(pdf)
    assert np.array_equal(embedded[0], decode_png(source))
    assert np.array_equal(embedded[1], decode_png(heatmap)[..., ::-1])  # BGR -> RGB
    assert png_stream(source) is not None and png_stream(source).data in pdf  # type: ignore[union-attr]


def test_pngs_that_cannot_be_embedded_as_they_are_still_are(make_doc: MakeDoc) -> None:
    """16-bit, alpha and palette PNGs take fpdf2's own path (decode, deflate) instead."""
    rng = np.random.default_rng(3)
    grey16 = cv2.imencode(".png", rng.integers(0, 65535, (40, 50), dtype=np.uint16))[1].tobytes()
    bgra = cv2.imencode(".png", rng.integers(0, 255, (40, 50, 4), dtype=np.uint8))[1].tobytes()
    assert png_stream(grey16) is None and png_stream(bgra) is None
    pdf = render_report_pdf(make_doc(), grey16, bgra)
    assert [image.shape[:2] for image in _embedded_pixels(pdf)] == [(40, 50), (40, 50)]


@pytest.mark.parametrize("name", ["Հայկ Սարգսյան", "ნინო ბერიძე", "שרה כהן"])
def test_names_outside_the_core_ranges_use_the_complete_font(
    name: str, make_doc: MakeDoc, patient_factory: Callable[..., PatientInfo], report_pngs: Pngs
) -> None:
    """Armenian, Georgian, Hebrew: not in the cut faces, drawn from the complete DejaVu Sans."""
    assert all(not any(a <= ord(c) <= b for a, b in CORE_RANGES) for c in name.replace(" ", ""))
    _, text = render_text(make_doc(patient=patient_factory(patient_name=name)), report_pngs)
    assert "\ufffd" not in text
    for word in name.split():
        assert word in text or word[::-1] in text  # pypdf may give right-to-left text reversed


def test_foreign_model_report_says_not_assessed_lists_other_findings_and_names_the_operating_point(
    report_pngs: Pngs, patient_factory: Callable[..., PatientInfo]
) -> None:
    """A 2-label pneumonia model: PNEUMONIA is broader than Consolidation and not approved
    for it, so no condition is assessed; the page must still show the positive label."""
    from reports.predictions import build_predictions_document, map_outputs

    findings, limits, outputs = map_outputs(
        ("NORMAL", "PNEUMONIA"),
        [0.03, 0.97],
        {"PNEUMONIA": 0.2},
        {"NORMAL": None, "PNEUMONIA": {"condition": "Consolidation", "relation": "broader"}},
        normal_label="NORMAL",
    )
    model = {
        "name": "xception-pneumonia",
        "version": "1.0.0",
        "weights_sha256": "abcdef012345" + "0" * 52,
        "intended_use": "Research only, NOT FOR CLINICAL USE",
        "clinical_status": "research",
        "operating_point": "high_sensitivity",
        "manifest_schema": 2,
    }
    doc = build_predictions_document(
        patient=patient_factory(),
        findings=findings,
        model=model,
        thresholds=limits,
        heatmap={"method": "grad-cam", "finding": "PNEUMONIA", "layer": "xception/block14_sepconv2_act"},
        provenance={},
        timings_ms={},
        publication={},
        source_path="/in/a.dcm",
        model_outputs=outputs,
    )
    reader, text = render_text(doc, report_pngs)
    assert len(reader.pages) == 1
    assert text.count("not assessed by this model") == len(LABELS)
    assert "Overall result: Abnormal" in text
    assert "Other findings" in text and "PNEUMONIA: 97.0 % (threshold 20 %)" in text
    assert "related to Consolidation" in text
    assert "NORMAL:" not in text  # the normal label is not a finding
    assert "Clinical status: research" in text and "operating point: high_sensitivity" in text
    assert "manifest schema: 2" in text and "abcdef012345" in text
    assert DEMO_DISCLAIMER not in text
