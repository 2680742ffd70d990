"""The prediction document: findings, overall result, metadata, and its JSON bytes.

Stage: prediction document. Inputs: the model's per-label confidences, the bundle's
labels, thresholds and label map, the patient, and provenance gathered along the way.
Output: the ``*_predictions.json`` document of the API contract ("Prediction JSON" in
API.md), which is also what the PDF renderer reads.

Model labels -> the 11 conditions (:func:`map_outputs`), by name, as the bundle's
``label_map`` says:

* a label feeds its condition when its relation is ``exact`` or ``narrower``, or
  ``broader`` with ``use_for_condition: true``; a condition fed by several labels
  (NIH Nodule + Mass -> Nodule/Mass) takes the *present* label with the highest
  probability, else the highest probability (plain max when their thresholds are
  equal), and that label's threshold, so ``presence == confidence >= threshold``
  always holds for a finding;
* a condition no label feeds is ``"assessed": false``, ``"presence": false``,
  ``"confidence": null`` (and its threshold ``null``);
* every model label, mapped or not, is in ``model_outputs``, in model order.

Result: ``TB Presumptive`` when Tuberculosis is assessed and present; else ``Abnormal``
when an assessed condition is present *or any other model label is present* (a label
kept out of the conditions, unmapped or ``broader``, still makes the study abnormal: a
model's positive output must never be reported as ``Normal``); the ``normal_label``
(``"no finding"``) never counts; else ``Normal``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

from inference.image import PatientInfo
from inference.labels import LABELS

DEFAULT_THRESHOLD = 0.5
TB_LABEL = "Tuberculosis"
RESULT_TB = "TB Presumptive"
RESULT_ABNORMAL = "Abnormal"
RESULT_NORMAL = "Normal"
CONFIDENCE_DECIMALS = 4


def clean_confidence(value: float) -> float:
    """A reportable confidence: NaN -> 0.0, clipped to [0, 1], rounded to 4 decimals."""
    number = float(value)
    if math.isnan(number):
        return 0.0
    return round(min(1.0, max(0.0, number)), CONFIDENCE_DECIMALS)


def resolve_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    """Every label of ``LABELS`` -> its threshold (``DEFAULT_THRESHOLD`` when absent).

    Raises ``ValueError`` for a threshold that is not a finite number in [0, 1] or for a
    key that is not a label (a typo in a bundle must not silently fall back to 0.5).
    """
    unknown = set(thresholds) - set(LABELS)
    if unknown:
        raise ValueError(f"thresholds for unknown labels: {sorted(unknown)}")
    resolved: dict[str, float] = {}
    for label in LABELS:
        value = float(thresholds.get(label, DEFAULT_THRESHOLD))
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"threshold for {label!r} must be in [0, 1], got {value!r}")
        resolved[label] = value
    return resolved


def condition_thresholds(thresholds: Mapping[str, float | None]) -> dict[str, float | None]:
    """All 11 conditions -> threshold; ``None`` kept (a condition not assessed), others
    checked and defaulted as :func:`resolve_thresholds` does."""
    given = {k: v for k, v in thresholds.items() if v is not None}
    resolved: dict[str, float | None] = dict(resolve_thresholds(given))
    for key, value in thresholds.items():
        if value is None:
            resolved[key] = None
    return resolved


def build_findings(
    labels: Sequence[str],
    confidences: Sequence[float] | np.ndarray,
    thresholds: Mapping[str, float],
) -> list[dict[str, Any]]:
    """One finding per label of ``LABELS``, in that order.

    Inputs: ``labels``, the model's output order (a permutation of ``LABELS``);
    ``confidences``, one score per entry of ``labels``; ``thresholds``, label ->
    threshold (missing labels use 0.5). Output: ``[{"name", "presence", "confidence", "assessed"}]``
    where ``confidence`` is cleaned by ``clean_confidence`` and ``presence`` is
    ``confidence >= threshold`` evaluated on that reported value, so a reader can always
    re-derive ``presence`` from the JSON.
    """
    scores = np.asarray(confidences, dtype=np.float64).reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} confidences")
    if sorted(labels) != sorted(LABELS):
        raise ValueError(f"model labels {list(labels)} are not the contract's {list(LABELS)}")
    by_label = dict(zip(labels, scores.tolist()))
    limits = resolve_thresholds(thresholds)
    findings: list[dict[str, Any]] = []
    for label in LABELS:
        confidence = clean_confidence(by_label[label])
        findings.append(
            {
                "name": label,
                "presence": bool(confidence >= limits[label]),
                "confidence": confidence,
                "assessed": True,
            }
        )
    return findings


def map_outputs(
    labels: Sequence[str],
    confidences: Sequence[float] | np.ndarray,
    thresholds: Mapping[str, float],
    label_map: Mapping[str, Mapping[str, Any] | str | None],
    normal_label: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float | None], list[dict[str, Any]]]:
    """Model outputs -> (findings for the 11 conditions, their thresholds, model_outputs).

    ``labels`` and ``confidences``: the model's labels and probabilities, in its order;
    ``thresholds``: label -> threshold (0.5 when absent); ``label_map``: label ->
    ``{"condition", "relation", "use_for_condition"}`` or ``None`` (unmapped; labels
    absent from it are unmapped too); ``normal_label``: the "no finding" class.
    See the module docstring for the rules.
    """
    scores = np.asarray(confidences, dtype=np.float64).reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} confidences")
    outputs: list[dict[str, Any]] = []
    fed: dict[str, list[dict[str, Any]]] = {condition: [] for condition in LABELS}
    for label, raw in zip(labels, scores.tolist()):
        limit = float(thresholds.get(label, DEFAULT_THRESHOLD))
        if not 0.0 <= limit <= 1.0:
            raise ValueError(f"threshold for {label!r} must be in [0, 1], got {limit!r}")
        probability = clean_confidence(raw)
        entry = label_map.get(label) or {}
        if isinstance(entry, str):  # the manifest's shorthand: "label": "Condition" is exact
            entry = {"condition": entry, "relation": "exact"}
        condition = entry.get("condition")
        if condition is not None and condition not in fed:
            raise ValueError(f"{label!r} is mapped to {condition!r}, not a condition")
        relation = "normal" if label == normal_label else (entry.get("relation", "exact") if condition else None)
        used = bool(condition) and bool(entry.get("use_for_condition", relation != "broader"))
        record = {
            "label": label,
            "probability": probability,
            "threshold": limit,
            "presence": bool(probability >= limit),
            "maps_to": condition,
            "relation": relation,
            "used_for_condition": used,
        }
        outputs.append(record)
        if used and condition is not None:
            fed[condition].append(record)
    findings: list[dict[str, Any]] = []
    condition_thresholds: dict[str, float | None] = {}
    for condition in LABELS:
        sources = fed[condition]
        if not sources:
            findings.append({"name": condition, "presence": False, "confidence": None, "assessed": False})
            condition_thresholds[condition] = None
            continue
        present = [r for r in sources if r["presence"]]
        chosen = max(present or sources, key=lambda r: r["probability"])
        findings.append(
            {
                "name": condition,
                "presence": chosen["presence"],
                "confidence": chosen["probability"],
                "assessed": True,
            }
        )
        condition_thresholds[condition] = chosen["threshold"]
    return findings, condition_thresholds, outputs


def overall_result(
    findings: Iterable[Mapping[str, Any]], model_outputs: Iterable[Mapping[str, Any]] | None = None
) -> str:
    """``"TB Presumptive"`` if Tuberculosis is (assessed and) present, else ``"Abnormal"``
    if any finding is present or any model label outside the conditions (not the
    normal label) is present, else ``"Normal"``."""
    present = {str(f["name"]) for f in findings if f["presence"] and f.get("assessed", True)}
    if TB_LABEL in present:
        return RESULT_TB
    others = [
        o
        for o in model_outputs or ()
        if o["presence"] and o.get("relation") != "normal" and not o.get("used_for_condition")
    ]
    return RESULT_ABNORMAL if present or others else RESULT_NORMAL


def build_predictions_document(
    *,
    patient: PatientInfo,
    findings: list[dict[str, Any]],
    model: Mapping[str, Any],
    thresholds: Mapping[str, float | None],
    heatmap: Mapping[str, Any],
    provenance: Mapping[str, Any],
    timings_ms: Mapping[str, float | np.floating[Any]],
    publication: Mapping[str, Any],
    source_path: str,
    model_outputs: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the ``*_predictions.json`` document.

    Inputs: ``findings`` from ``build_findings``; ``model`` (name, version, sha256,
    input_size, intended_use, ...); ``thresholds`` as given to ``build_findings``;
    ``heatmap`` (method, finding, layer); pixel ``provenance``; ``timings_ms``;
    ``publication`` (job_id, rank); the source DICOM path.

    Output keys, in order: ``result``, ``findings``, ``metadata`` (the six contract keys,
    every value a string), then ``model``, ``thresholds`` (all 11 labels; ``null`` for a
    condition not assessed), ``model_outputs`` (every model label: see
    :func:`map_outputs`; from ``findings`` when not given), ``heatmap``,
    ``provenance``, ``timings_ms``, ``publication``, ``source`` (path and study
    identifiers). Values are converted to plain JSON types (numpy scalars and arrays,
    tuples, paths); non-finite floats become ``null``.
    """
    if model_outputs is None:  # the model's labels are the conditions themselves
        limits = resolve_thresholds({k: v for k, v in thresholds.items() if v is not None})
        model_outputs = [
            {
                "label": f["name"],
                "probability": f["confidence"],
                "threshold": limits[f["name"]],
                "presence": f["presence"],
                "maps_to": f["name"],
                "relation": "exact",
                "used_for_condition": True,
            }
            for f in findings
            if f.get("assessed", True)
        ]
    document: dict[str, Any] = {
        "result": overall_result(findings, model_outputs),
        "findings": findings,
        "metadata": {
            "model_version": _text(model.get("version")),
            "patient_id": patient.patient_id,
            "patient_name": patient.patient_name,
            "sop_instance_uid": patient.sop_instance_uid,
            "age": patient.age,
            "sex": patient.sex,
        },
        "model": dict(model),
        "thresholds": condition_thresholds(thresholds),
        "model_outputs": [dict(o) for o in model_outputs],
        "heatmap": dict(heatmap),
        "provenance": dict(provenance),
        "timings_ms": dict(timings_ms),
        "publication": dict(publication),
        "source": {
            "path": source_path,
            "study_instance_uid": patient.study_instance_uid,
            "series_instance_uid": patient.series_instance_uid,
            "study_date": patient.study_date,
            "acquisition_datetime": patient.acquisition_datetime,
            "modality": patient.modality,
            "view_position": patient.view_position,
            "body_part": patient.body_part,
        },
    }
    plain = _to_json_value(document)
    assert isinstance(plain, dict)
    return plain


def dumps_predictions(doc: Mapping[str, Any]) -> bytes:
    """The document as UTF-8 JSON (non-ASCII kept, 2-space indent, trailing newline).

    Raises ``ValueError`` on NaN/Infinity, which JSON cannot carry.
    """
    return (json.dumps(doc, ensure_ascii=False, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _to_json_value(value: Any) -> Any:
    """Recursively convert ``value`` to JSON-native types (see the document docstring)."""
    if isinstance(value, Mapping):
        return {str(key): _to_json_value(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return _to_json_value(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_to_json_value(item) for item in value]
    if isinstance(value, np.generic):
        return _to_json_value(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
