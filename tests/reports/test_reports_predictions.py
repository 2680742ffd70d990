"""reports.predictions: findings, overall result, the prediction document and its bytes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from inference.image import PatientInfo
from reports.predictions import (
    LABELS,
    build_findings,
    build_predictions_document,
    dumps_predictions,
    overall_result,
)

EXPECTED_LABELS = (
    "Tuberculosis",
    "Cardiomegaly",
    "Pleural Thickening",
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation",
    "Atelectasis",
    "Nodule/Mass",
    "Fibrosis",
    "Infiltration",
    "Calcification",
)


def scores(**by_label: float) -> list[float]:
    return [by_label.get(label, 0.1) for label in LABELS]


def test_labels_are_the_contract_labels() -> None:
    assert LABELS == EXPECTED_LABELS


def test_findings_cover_every_label_in_order_with_per_label_thresholds() -> None:
    findings = build_findings(
        LABELS,
        scores(Tuberculosis=0.35, Cardiomegaly=0.49, Fibrosis=0.5),
        {"Tuberculosis": 0.3},
    )
    assert [f["name"] for f in findings] == list(EXPECTED_LABELS)
    by_name = {f["name"]: f for f in findings}
    assert by_name["Tuberculosis"]["presence"] is True  # 0.35 >= its own 0.3
    assert by_name["Cardiomegaly"]["presence"] is False  # 0.49 < default 0.5
    assert by_name["Fibrosis"]["presence"] is True  # equality counts as present
    assert all(set(f) == {"name", "presence", "confidence", "assessed"} for f in findings)
    assert all(f["assessed"] is True for f in findings)
    assert all(type(f["presence"]) is bool and type(f["confidence"]) is float for f in findings)


@pytest.mark.parametrize(
    ("raw", "reported", "present"),
    [
        (float("nan"), 0.0, False),
        (1.7, 1.0, True),
        (-0.2, 0.0, False),
        (0.123456, 0.1235, False),
        (0.49996, 0.5, True),
    ],  # presence is judged on the reported (rounded) value
)
def test_confidence_cleaning(raw: float, reported: float, present: bool) -> None:
    finding = build_findings(LABELS, scores(Tuberculosis=raw), {})[0]
    assert finding == {
        "name": "Tuberculosis",
        "presence": present,
        "confidence": reported,
        "assessed": True,
    }


def test_findings_accept_numpy_and_reorder_model_labels() -> None:
    model_order = tuple(reversed(LABELS))
    confidences = np.array([0.9 if label == "Nodule/Mass" else 0.0 for label in model_order], np.float32)
    findings = build_findings(model_order, confidences, {})
    assert [f["name"] for f in findings] == list(LABELS)
    assert [f["name"] for f in findings if f["presence"]] == ["Nodule/Mass"]


@pytest.mark.parametrize(
    ("labels", "confidences", "thresholds"),
    [
        (LABELS[:-1], [0.1] * 10, {}),  # a label missing
        (LABELS, [0.1] * 10, {}),  # length mismatch
        (LABELS, [0.1] * 11, {"Tuberculose": 0.5}),  # unknown threshold key
        (LABELS, [0.1] * 11, {"Tuberculosis": 1.5}),
        (LABELS, [0.1] * 11, {"Tuberculosis": float("nan")}),
    ],
)
def test_findings_reject_bad_inputs(
    labels: tuple[str, ...], confidences: list[float], thresholds: dict[str, float]
) -> None:
    with pytest.raises(ValueError):
        build_findings(labels, confidences, thresholds)


@pytest.mark.parametrize(
    ("present", "result"),
    [
        ({"Tuberculosis", "Cardiomegaly"}, "TB Presumptive"),
        ({"Tuberculosis"}, "TB Presumptive"),
        ({"Pleural Effusion"}, "Abnormal"),
        (set(), "Normal"),
    ],
)
def test_overall_result(present: set[str], result: str) -> None:
    findings = [{"name": n, "presence": n in present, "confidence": 0.0} for n in LABELS]
    assert overall_result(findings) == result


def test_document_shape_and_string_metadata(
    make_doc: Callable[..., dict[str, Any]],
) -> None:
    doc = make_doc(
        patient=PatientInfo(patient_id="P1"),  # every other field empty
        model={
            "name": "m",
            "version": 3,
            "sha256": "ab",
            "input_size": (512, 512),
            "intended_use": "x",
        },
        confidences=scores(Tuberculosis=0.9),
    )
    assert list(doc) == [
        "result",
        "findings",
        "metadata",
        "model",
        "thresholds",
        "model_outputs",
        "heatmap",
        "provenance",
        "timings_ms",
        "publication",
        "source",
    ]
    assert doc["result"] == "TB Presumptive"
    assert doc["metadata"] == {
        "model_version": "3",
        "patient_id": "P1",
        "patient_name": "",
        "sop_instance_uid": "",
        "age": "",
        "sex": "",
    }
    assert all(isinstance(v, str) for v in doc["metadata"].values())
    assert doc["model"]["input_size"] == [512, 512]
    assert list(doc["thresholds"]) == list(LABELS) and doc["thresholds"]["Tuberculosis"] == 0.4
    assert doc["publication"]["job_id"] == "job-1"
    assert doc["source"]["path"] == "/data/in/a.dcm"


def test_document_converts_numpy_and_non_finite_values(patient: PatientInfo) -> None:
    doc = build_predictions_document(
        patient=patient,
        findings=build_findings(LABELS, scores(), {}),
        model={
            "name": "m",
            "version": "1",
            "mean": np.float32(0.5),
            "shape": np.array([1, 2]),
        },
        thresholds={},
        heatmap={"method": "grad-cam", "finding": "Tuberculosis", "layer": "conv"},
        provenance={"window": (np.int64(40), np.float64(400.0))},
        timings_ms={"total": np.float32(1.5), "broken": float("nan")},
        publication={"job_id": "j", "rank": ["a", "b", "c"]},
        source_path="/x.dcm",
    )
    assert doc["model"]["mean"] == 0.5 and doc["model"]["shape"] == [1, 2]
    assert doc["provenance"]["window"] == [40, 400.0]
    assert doc["timings_ms"] == {"total": 1.5, "broken": None}
    assert json.loads(dumps_predictions(doc)) == doc


def test_dumps_is_utf8_indented_and_round_trips(
    make_doc: Callable[..., dict[str, Any]], patient_factory: Callable[..., PatientInfo]
) -> None:
    doc = make_doc(patient=patient_factory(patient_name="Иванов^Иван"))
    data = dumps_predictions(doc)
    assert "Иванов".encode() in data  # not \u-escaped
    assert data.startswith(b'{\n  "result": ') and data.endswith(b"}\n")
    assert json.loads(data) == doc
    with pytest.raises(ValueError):
        dumps_predictions({"x": float("nan")})
