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
    map_outputs,
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


# -- label maps: a model's own labels onto the 11 conditions ------------------------------
NIH_LIKE = ("Nodule", "Mass", "Lung Opacity", "Hernia", "Effusion", "No Finding")
NIH_MAP = {
    "Nodule": {"condition": "Nodule/Mass", "relation": "narrower"},
    "Mass": {"condition": "Nodule/Mass", "relation": "narrower"},
    "Lung Opacity": {"condition": "Consolidation", "relation": "broader"},
    "Hernia": None,
    "Effusion": {"condition": "Pleural Effusion", "relation": "exact"},
}


def _mapped(probs: list[float], thresholds: dict[str, float] | None = None, label_map: dict[str, Any] | None = None):
    return map_outputs(NIH_LIKE, probs, thresholds or {}, label_map or NIH_MAP, normal_label="No Finding")


def test_narrower_labels_fold_into_one_condition_by_max() -> None:
    findings, limits, _ = _mapped([0.3, 0.8, 0.1, 0.1, 0.2, 0.1])
    nodule = next(f for f in findings if f["name"] == "Nodule/Mass")
    assert nodule == {"name": "Nodule/Mass", "presence": True, "confidence": 0.8, "assessed": True}
    assert limits["Nodule/Mass"] == 0.5
    # With different thresholds, a present label wins over a higher absent one, so
    # presence == confidence >= threshold still holds for the finding.
    findings, limits, _ = _mapped([0.3, 0.4, 0.1, 0.1, 0.2, 0.1], {"Nodule": 0.25, "Mass": 0.5})
    nodule = next(f for f in findings if f["name"] == "Nodule/Mass")
    assert (nodule["presence"], nodule["confidence"], limits["Nodule/Mass"]) == (True, 0.3, 0.25)


def test_broader_labels_stay_out_unless_approved_and_unmapped_labels_are_still_reported() -> None:
    findings, limits, outputs = _mapped([0.1, 0.1, 0.9, 0.7, 0.2, 0.1])
    by_name = {f["name"]: f for f in findings}
    assert by_name["Consolidation"] == {
        "name": "Consolidation",
        "presence": False,
        "confidence": None,
        "assessed": False,
    }
    assert limits["Consolidation"] is None
    opacity, hernia = outputs[2], outputs[3]
    assert opacity == {
        "label": "Lung Opacity",
        "probability": 0.9,
        "threshold": 0.5,
        "presence": True,
        "maps_to": "Consolidation",
        "relation": "broader",
        "used_for_condition": False,
    }
    assert hernia["maps_to"] is None and hernia["relation"] is None and hernia["presence"] is True
    assert [o["label"] for o in outputs] == list(NIH_LIKE)  # every label, model order
    # Present labels outside the conditions still make the study abnormal.
    assert overall_result(findings, outputs) == "Abnormal"
    approved = {**NIH_MAP, "Lung Opacity": {**NIH_MAP["Lung Opacity"], "use_for_condition": True}}
    findings, _, outputs = _mapped([0.1, 0.1, 0.9, 0.1, 0.2, 0.1], label_map=approved)
    assert next(f for f in findings if f["name"] == "Consolidation")["confidence"] == 0.9
    assert outputs[2]["used_for_condition"] is True


def test_normal_label_is_not_a_finding_and_unassessed_conditions_are_listed() -> None:
    findings, limits, outputs = _mapped([0.1, 0.1, 0.1, 0.1, 0.1, 0.97])
    assert [f["name"] for f in findings] == list(EXPECTED_LABELS)
    assessed = [f["name"] for f in findings if f["assessed"]]
    assert assessed == ["Pleural Effusion", "Nodule/Mass"]
    for f in findings:
        if not f["assessed"]:
            assert f["presence"] is False and f["confidence"] is None and limits[f["name"]] is None
    assert outputs[5]["relation"] == "normal" and outputs[5]["presence"] is True
    assert overall_result(findings, outputs) == "Normal"  # "No Finding" present is not abnormal


def test_tb_presumptive_only_when_tuberculosis_is_assessed_and_present() -> None:
    tb_map = {"tb": "Tuberculosis", "other": None}
    findings, _, outputs = map_outputs(("tb", "other"), [0.9, 0.1], {}, tb_map)
    assert overall_result(findings, outputs) == "TB Presumptive"
    findings, _, outputs = map_outputs(("tb", "other"), [0.9, 0.1], {}, {"tb": None, "other": None})
    assert not any(f["assessed"] for f in findings)
    assert overall_result(findings, outputs) == "Abnormal"  # the unmapped label is present


def test_document_carries_model_outputs_and_null_thresholds(patient: PatientInfo) -> None:
    findings, limits, outputs = _mapped([0.3, 0.8, 0.1, 0.1, 0.2, 0.1])
    doc = build_predictions_document(
        patient=patient,
        findings=findings,
        model={"name": "nih", "version": "2", "clinical_status": "research", "operating_point": "site-A"},
        thresholds=limits,
        heatmap={"method": "grad-cam", "finding": "Mass"},
        provenance={},
        timings_ms={},
        publication={},
        source_path="/x.dcm",
        model_outputs=outputs,
    )
    assert doc["thresholds"]["Tuberculosis"] is None and doc["thresholds"]["Nodule/Mass"] == 0.5
    assert list(doc["thresholds"]) == list(EXPECTED_LABELS)
    assert [o["label"] for o in doc["model_outputs"]] == list(NIH_LIKE)
    assert doc["result"] == "Abnormal"
    assert json.loads(dumps_predictions(doc)) == doc
