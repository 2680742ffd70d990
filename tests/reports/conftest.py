"""Fixtures for the reports/ tests: a patient, a model record, documents and small PNGs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.image import PatientInfo
from reports.images import (
    encode_png,
    heatmap_caption,
    render_heatmap_overlay,
    to_uint8_display,
)
from reports.predictions import LABELS, build_findings, build_predictions_document

DEMO_MODEL: dict[str, Any] = {
    "name": "cxr-demo-densenet",
    "version": "0.3.1",
    "sha256": "0123456789abcdef" * 4,
    "input_size": [512, 512],
    "intended_use": "Demo: trained on synthetic images, not for clinical use",
}


def make_patient(**overrides: str) -> PatientInfo:
    fields = {
        "patient_id": "PAT-00123",
        "patient_name": "Doe^Jane",
        "sop_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.2",
        "age": "045Y",
        "sex": "F",
        "modality": "DX",
        "view_position": "PA",
        "study_date": "20240131",
        "acquisition_datetime": "20240131101500",
    }
    fields.update(overrides)
    return PatientInfo(**fields)


@pytest.fixture
def patient() -> PatientInfo:
    return make_patient()


@pytest.fixture(scope="session")
def patient_factory() -> Callable[..., PatientInfo]:
    """Factory: the default patient with keyword overrides (``patient_name=...``)."""
    return make_patient


@pytest.fixture(scope="session")
def make_doc() -> Callable[..., dict[str, Any]]:
    """Factory: a full prediction document; keyword overrides for patient/confidences/model."""

    def factory(
        *,
        patient: PatientInfo | None = None,
        confidences: list[float] | None = None,
        model: dict[str, Any] | None = None,
        thresholds: dict[str, float] | None = None,
        job_id: str = "job-1",
        rank: list[str] | None = None,
    ) -> dict[str, Any]:
        scores = confidences if confidences is not None else [0.05 * i for i in range(len(LABELS))]
        limits = thresholds if thresholds is not None else {"Tuberculosis": 0.4}
        return build_predictions_document(
            patient=patient or make_patient(),
            findings=build_findings(LABELS, scores, limits),
            model=model if model is not None else DEMO_MODEL,
            thresholds=limits,
            heatmap={
                "method": "grad-cam",
                "finding": "Tuberculosis",
                "layer": "conv5_block16_concat",
            },
            provenance={"voi": "window", "photometric": "MONOCHROME2"},
            timings_ms={"decode": 12.5, "inference": 80.0},
            publication={
                "job_id": job_id,
                "rank": rank or ["20240131101500", "1.2.3", "/in/a.dcm"],
            },
            source_path="/data/in/a.dcm",
        )

    return factory


@pytest.fixture(scope="session")
def display_u8() -> np.ndarray:
    """A small synthetic radiograph-like display image (256 x 320)."""
    rows, cols = np.mgrid[0:256, 0:320].astype(np.float32)
    pixels = 0.5 + 0.25 * np.sin(cols / 17.0) * np.cos(rows / 23.0)
    return to_uint8_display(pixels)


@pytest.fixture(scope="session")
def report_pngs(display_u8: np.ndarray) -> tuple[bytes, bytes]:
    """(source PNG, heatmap PNG) made from ``display_u8`` the way the worker does."""
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[2:5, 3:6] = 1.0
    return encode_png(display_u8), encode_png(
        render_heatmap_overlay(display_u8, heat, heatmap_caption("Tuberculosis", 0.87))
    )


@pytest.fixture
def output_root(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    root.mkdir()
    return root
