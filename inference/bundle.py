"""Model bundles: a hospital's model file plus ``manifest.json`` saying how to use it.

A bundle is a folder::

    manifest.json   identity, format, input contract, output labels, label map,
                    thresholds and operating points, Grad-CAM layer, weights SHA-256
    model.keras     the model (``.keras``, legacy ``.h5``, or a SavedModel folder)

``CXR_MODEL_DIR`` selects the bundle; the default is the demo bundle shipped in
``inference/bundles/demo``. ``CXR_OPERATING_POINT`` chooses one of the manifest's named
operating points (default ``default``). The format is described, with worked examples,
in ``docs/model-bundles.md``.

Two manifest schemas are read:

* schema 2 (``"schema": 2``): the model's own labels, input contract and activation,
  and a *name-based* ``label_map`` onto the API's 11 conditions;
* schema 1 (no ``schema`` key): the original format, whose labels had to be the 11
  conditions in order and whose input was one grey channel in [0, 1]. It is read as
  the equivalent schema 2 bundle (every label ``exact`` to itself).

Every refusal is a :class:`BundleError` whose message is one line,
``model bundle <dir>: <reason>``: the CLI prints it and a worker refuses to start with
it. The SHA-256 of the weights is checked at load, so a truncated copy or a swapped
file is refused instead of silently producing other numbers. This module does not
import TensorFlow: the API and the CLI can read a manifest cheaply; the checks that
need the model itself (layer paths, output shapes) are ``inference.check``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import BundleError
from inference.labels import LABELS

MANIFEST_NAME = "manifest.json"
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "bundles" / "demo"
SCHEMA = 2
DEFAULT_THRESHOLD = 0.5
DEFAULT_OPERATING_POINT = "default"
TODO = "TODO"

FORMATS = ("keras", "savedmodel")
RESIZES = ("stretch", "letterbox", "center_crop")
INTERPOLATIONS = ("area", "linear", "cubic", "nearest")
ACTIVATIONS = ("sigmoid", "softmax", "none")
RELATIONS = ("exact", "narrower", "broader")
CHANNEL_ORDERS = ("RGB", "BGR")

#: Normalisation presets: ``x' = (x * scale - mean[c]) / std[c]`` on the 8-bit display
#: image's values ``x`` in [0, 255] (the Keras Applications ``preprocess_input`` modes,
#: torchxrayvision's range, and the model that rescales in its own graph).
PRESETS: dict[str, dict[str, Any]] = {
    "unit": {"scale": 1 / 255.0, "mean": (0.0,), "std": (1.0,)},
    "keras_tf": {"scale": 1 / 127.5, "mean": (1.0,), "std": (1.0,)},
    "keras_torch": {"scale": 1 / 255.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    "imagenet": {"scale": 1 / 255.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    # Keras's caffe mode flips RGB to BGR and subtracts the BGR means: the means below
    # are in the model's (BGR) channel order. A grey radiograph has equal channels, so
    # the flip itself changes nothing.
    "keras_caffe": {"scale": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0,)},
    "in_model": {"scale": 1.0, "mean": (0.0,), "std": (1.0,)},
    "xrv": {"scale": 2048 / 255.0, "mean": (1024.0,), "std": (1.0,)},
}


@dataclass(frozen=True)
class LabelMapping:
    """Where one model label goes: an API condition (or ``None``), and how."""

    condition: str | None
    relation: str | None = None  # exact | narrower | broader; None when unmapped
    use_for_condition: bool = True  # False for a broader label not yet approved for its condition

    @property
    def feeds_condition(self) -> bool:
        return self.condition is not None and self.use_for_condition


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    name: str
    version: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    input_size: tuple[int, int]
    channels: int
    normalization: dict[str, Any]
    gradcam_layer: str
    logits_layer: str | None
    weights_file: str
    weights_sha256: str
    intended_use: str
    demo: bool
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)
    #: ``demo``, ``research``, ``cleared``, ... (machine-checkable; schema 1 derives it from ``demo``)
    clinical_status: str = "unspecified"
    schema: int = SCHEMA
    format: str = "keras"
    signature: str | None = None
    channel_order: str = "RGB"
    resize: str = "stretch"
    interpolation: str = "area"
    activation: str = "none"
    output_name: str | None = None
    normal_label: str | None = None
    label_map: dict[str, LabelMapping] = field(default_factory=dict)
    operating_point: str = DEFAULT_OPERATING_POINT
    operating_points: tuple[str, ...] = (DEFAULT_OPERATING_POINT,)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / self.weights_file

    def identity(self) -> dict[str, Any]:
        """What goes into every prediction JSON and report about the model."""
        return {
            "name": self.name,
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "input_size": list(self.input_size),
            "intended_use": self.intended_use,
            "clinical_status": self.clinical_status,
            "operating_point": self.operating_point,
            "manifest_schema": self.schema,
            "demo": self.demo,
        }

    def assessed_conditions(self) -> list[str]:
        """The API conditions at least one model label feeds, in API order."""
        fed = {m.condition for m in self.label_map.values() if m.feeds_condition}
        return [c for c in LABELS if c in fed]

    def label_map_json(self) -> dict[str, Any]:
        """The label map as plain JSON (what ``reports.predictions.map_outputs`` takes)."""
        return {
            label: {"condition": m.condition, "relation": m.relation, "use_for_condition": m.use_for_condition}
            for label, m in self.label_map.items()
        }


def bundle_dir_from_env() -> Path:
    value = os.environ.get("CXR_MODEL_DIR", "").strip()
    return Path(value) if value else DEFAULT_BUNDLE_DIR


def operating_point_from_env() -> str:
    return os.environ.get("CXR_OPERATING_POINT", "").strip() or DEFAULT_OPERATING_POINT


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a folder (a SavedModel): every file's relative path and
    bytes, in sorted order, so a changed or added variable file changes it."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode("utf-8") + b"\0")
        digest.update(bytes.fromhex(sha256_file(item)))
    return digest.hexdigest()


def read_bundle(path: Path | None = None, *, verify: bool = True, operating_point: str | None = None) -> ModelBundle:
    """Read and validate a bundle's manifest (and, by default, its weights' SHA-256).

    ``operating_point`` defaults to ``CXR_OPERATING_POINT`` (else ``default``).
    """
    root = Path(path) if path is not None else bundle_dir_from_env()
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"model bundle {root}: {MANIFEST_NAME} not found") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"model bundle {root}: {MANIFEST_NAME} unreadable ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"model bundle {root}: {MANIFEST_NAME} is not a JSON object")
    point = operating_point if operating_point is not None else operating_point_from_env()
    try:
        schema = manifest.get("schema", 1)
        if schema == 1:
            bundle = _read_schema_1(root, manifest, point)
        elif schema == 2:
            bundle = _read_schema_2(root, manifest, point)
        else:
            raise _Refusal(f"unknown manifest schema {schema!r} (this engine reads 1 and 2)")
    except _Refusal as exc:
        raise BundleError(f"model bundle {root}: {exc}") from None
    if verify:
        verify_weights(bundle)
    return bundle


class _Refusal(Exception):
    """A manifest problem, before the bundle's folder is prefixed to it."""


def _read_schema_1(root: Path, manifest: dict[str, Any], point: str) -> ModelBundle:
    required = (
        "name",
        "version",
        "labels",
        "input_size",
        "weights_file",
        "weights_sha256",
        "gradcam_layer",
        "intended_use",
    )
    missing = [k for k in required if k not in manifest]
    if missing:
        raise _Refusal(f"manifest lacks {', '.join(missing)}")
    labels = tuple(manifest["labels"])
    if labels != LABELS:
        raise _Refusal(f"labels must be the API's 11 findings in order, got {list(labels)} (or use schema 2)")
    thresholds = _thresholds(manifest.get("thresholds", {}), labels, "thresholds")
    if point != DEFAULT_OPERATING_POINT:
        raise _Refusal(f"operating point {point!r} (CXR_OPERATING_POINT) is not in the manifest (schema 1 has none)")
    size = _size(manifest["input_size"], "input_size")
    norm = manifest.get("normalization", {"mean": 0.0, "std": 1.0})
    mean, std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0)) or 1.0
    demo = bool(manifest.get("demo", False))
    return ModelBundle(
        path=root,
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        labels=labels,
        thresholds=thresholds,
        input_size=size,
        channels=int(manifest.get("channels", 1)),
        # Schema 1's mean and std applied to the image in [0, 1].
        normalization={"preset": None, "scale": 1 / 255.0, "mean": (mean,), "std": (std,)},
        gradcam_layer=str(manifest["gradcam_layer"]),
        logits_layer=manifest.get("logits_layer"),
        weights_file=str(manifest["weights_file"]),
        weights_sha256=str(manifest["weights_sha256"]).lower(),
        intended_use=str(manifest["intended_use"]),
        demo=demo,
        manifest=manifest,
        clinical_status=str(manifest.get("clinical_status") or ("demo" if demo else "unspecified")),
        schema=1,
        label_map={label: LabelMapping(label, "exact") for label in labels},
    )


def _read_schema_2(root: Path, manifest: dict[str, Any], point: str) -> ModelBundle:
    for key in ("name", "version", "intended_use", "clinical_status", "format", "weights", "input", "output"):
        if key not in manifest:
            raise _Refusal(f"manifest lacks {key!r}")
    fmt = manifest["format"]
    if fmt not in FORMATS:
        raise _Refusal(f"format {fmt!r} is not supported (use 'keras' for .keras/.h5 or 'savedmodel')")
    weights = _obj(manifest["weights"], "weights")
    if not isinstance(weights.get("file"), str) or not isinstance(weights.get("sha256"), str):
        raise _Refusal("weights needs 'file' and 'sha256'")
    weights_file = weights["file"]
    if fmt == "keras" and not weights_file.endswith((".keras", ".h5")):
        raise _Refusal(f"format 'keras' needs a .keras or .h5 file, got {weights_file!r}")
    signature = manifest.get("signature")
    if fmt == "savedmodel":
        signature = str(signature or "serving_default")

    inp = _obj(manifest["input"], "input")
    size = _size(inp.get("size"), "input.size")
    channels = inp.get("channels", 1)
    if channels not in (1, 3):
        raise _Refusal(f"input.channels must be 1 or 3, got {channels!r}")
    channel_order = _choice(inp.get("channel_order", "RGB"), CHANNEL_ORDERS, "input.channel_order")
    resize = _choice(inp.get("resize", "stretch"), RESIZES, "input.resize")
    interpolation = _choice(inp.get("interpolation", "area"), INTERPOLATIONS, "input.interpolation")
    normalization = _normalization(inp.get("normalization", "unit"), channels)

    out = _obj(manifest["output"], "output")
    labels_raw = out.get("labels")
    if not (isinstance(labels_raw, list) and labels_raw and all(isinstance(x, str) and x for x in labels_raw)):
        raise _Refusal("output.labels must be a non-empty list of the model's label names, in output order")
    labels = tuple(labels_raw)
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise _Refusal(f"output.labels repeats {', '.join(dupes)}")
    activation = _choice(out.get("activation", "none"), ACTIVATIONS, "output.activation")
    normal_label = out.get("normal_label")
    if normal_label is not None and normal_label not in labels:
        raise _Refusal(f"output.normal_label {normal_label!r} is not one of output.labels")
    output_name = out.get("output_name")

    label_map = _label_map(manifest.get("label_map"), labels, normal_label)
    base = _thresholds(manifest.get("thresholds", {}), labels, "thresholds")
    points = _obj(manifest.get("operating_points", {}), "operating_points")
    names = (DEFAULT_OPERATING_POINT, *[n for n in points if n != DEFAULT_OPERATING_POINT])
    if point not in names:
        raise _Refusal(f"operating point {point!r} (CXR_OPERATING_POINT) is not in the manifest (it has {list(names)})")
    overrides = {
        name: _point_thresholds(points[name], labels, f"operating_points.{name}") for name in points
    }  # every point is checked, not only the chosen one
    thresholds = {**base, **overrides.get(point, {})}  # a point overrides the labels it names

    gradcam = _obj(manifest.get("gradcam", {"layer": "auto"}), "gradcam")
    layer = gradcam.get("layer", "auto")
    if not isinstance(layer, str) or not layer.strip():
        raise _Refusal("gradcam.layer must be a layer path (e.g. 'xception/block14_sepconv2_act') or 'auto'")
    status = str(manifest["clinical_status"]).strip()
    if not status or status.upper() == TODO:
        raise _Refusal("clinical_status must say what the model is cleared for (demo, research, cleared, ...)")
    return ModelBundle(
        path=root,
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        labels=labels,
        thresholds=thresholds,
        input_size=size,
        channels=channels,
        normalization=normalization,
        gradcam_layer=layer,
        logits_layer=gradcam.get("logits_layer"),
        weights_file=weights_file,
        weights_sha256=weights["sha256"].lower(),
        intended_use=str(manifest["intended_use"]),
        demo=status == "demo",
        manifest=manifest,
        clinical_status=status,
        schema=2,
        format=fmt,
        signature=signature,
        channel_order=channel_order,
        resize=resize,
        interpolation=interpolation,
        activation=activation,
        output_name=output_name,
        normal_label=normal_label,
        label_map=label_map,
        operating_point=point,
        operating_points=names,
        provenance=dict(_obj(manifest.get("provenance", {}), "provenance")),
    )


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refusal(f"{where} must be a JSON object")
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise _Refusal(f"{where} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _size(value: Any, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise _Refusal(f"{where} must be [height, width], got {value!r}")
    return value[0], value[1]


def _numbers(value: Any, channels: int, where: str) -> tuple[float, ...]:
    items = value if isinstance(value, list) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise _Refusal(f"{where} must be a number or a list of numbers, got {value!r}") from None
    if len(numbers) not in (1, channels) or not all(math.isfinite(v) for v in numbers):
        raise _Refusal(f"{where} must give 1 or {channels} finite values, got {value!r}")
    return numbers


def _normalization(value: Any, channels: int) -> dict[str, Any]:
    if isinstance(value, str):
        if value not in PRESETS:
            raise _Refusal(
                f"unknown normalization preset {value!r} (one of {', '.join(PRESETS)}, or {{scale, mean, std}})"
            )
        spec = PRESETS[value]
        mean, std = spec["mean"], spec["std"]
        if channels == 1 and len(mean) == 3:  # a grey model with ImageNet statistics: their mean
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        return {"preset": value, "scale": spec["scale"], "mean": mean, "std": std}
    norm = _obj(value, "input.normalization")
    unknown = set(norm) - {"scale", "mean", "std"}
    if unknown:
        raise _Refusal(f"input.normalization has unknown keys {sorted(unknown)} (a preset name, or scale, mean, std)")
    scale = _numbers(norm.get("scale", 1 / 255.0), 1, "input.normalization.scale")[0]
    mean = _numbers(norm.get("mean", 0.0), channels, "input.normalization.mean")
    std = _numbers(norm.get("std", 1.0), channels, "input.normalization.std")
    if scale == 0 or any(s == 0 for s in std):
        raise _Refusal("input.normalization: scale and std must not be 0")
    return {"preset": None, "scale": scale, "mean": mean, "std": std}


def _thresholds(raw: Any, labels: tuple[str, ...], where: str) -> dict[str, float]:
    values = _obj(raw, where)
    unknown = [k for k in values if k not in labels]
    if unknown:
        raise _Refusal(f"{where} names {', '.join(map(repr, unknown))}, not among the model's labels")
    out: dict[str, float] = {}
    for label in labels:
        value = values.get(label, DEFAULT_THRESHOLD)
        if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
            raise _Refusal(f"{where}: threshold outside (0, 1) for {label}: {value!r}")
        out[label] = float(value)
    return out


def _point_thresholds(raw: Any, labels: tuple[str, ...], where: str) -> dict[str, float]:
    given = _obj(_obj(raw, where).get("thresholds", {}), f"{where}.thresholds")
    checked = _thresholds(given, labels, f"{where}.thresholds")
    return {label: checked[label] for label in given}


def _label_map(raw: Any, labels: tuple[str, ...], normal_label: str | None) -> dict[str, LabelMapping]:
    if raw is None:
        raise _Refusal("label_map is missing: map each model label to one of the 11 conditions by name (or null)")
    if isinstance(raw, str):
        raise _Refusal(f"label_map is not filled in ({raw[:60]!r}): map each model label to a condition or null")
    entries = _obj(raw, "label_map")
    unknown = [k for k in entries if k not in labels]
    if unknown:
        raise _Refusal(f"label_map names {', '.join(map(repr, unknown))}, not among output.labels")
    todo = [k for k, v in entries.items() if v == TODO or (isinstance(v, dict) and v.get("condition") == TODO)]
    if todo:
        raise _Refusal(
            f"label_map still says TODO for {', '.join(todo)}: map each to one of the 11 conditions, or null"
        )
    result: dict[str, LabelMapping] = {}
    for label in labels:
        value = entries.get(label)
        if isinstance(value, str):
            value = {"condition": value, "relation": "exact"}
        if value is None or (isinstance(value, dict) and value.get("condition") is None):
            result[label] = LabelMapping(None)
            continue
        entry = _obj(value, f"label_map.{label}")
        condition = entry.get("condition")
        if condition not in LABELS:
            raise _Refusal(f"label_map.{label} is mapped to {condition!r}, not one of the 11 conditions {list(LABELS)}")
        if label == normal_label:
            raise _Refusal(f"label_map.{label} is the normal_label ('no finding'), which cannot be a condition")
        relation = _choice(entry.get("relation", "exact"), RELATIONS, f"label_map.{label}.relation")
        use = entry.get("use_for_condition", relation != "broader")
        if not isinstance(use, bool):
            raise _Refusal(f"label_map.{label}.use_for_condition must be true or false")
        result[label] = LabelMapping(str(condition), relation, use)
    for condition in LABELS:
        feeding = [k for k, m in result.items() if m.condition == condition and m.feeds_condition]
        exact = [k for k in feeding if result[k].relation == "exact"]
        if exact and len(feeding) > 1:
            raise _Refusal(
                f"label_map: {', '.join(feeding)} all feed {condition!r}, but {exact[0]} is 'exact'; "
                "labels that fold into one condition are 'narrower'"
            )
    return result


def verify_weights(bundle: ModelBundle) -> None:
    path = bundle.weights_path
    exists = path.is_dir() if bundle.format == "savedmodel" else path.is_file()
    if not exists:
        raise BundleError(f"model bundle {bundle.path}: weights file {bundle.weights_file} not found")
    actual = sha256_path(path)
    if actual != bundle.weights_sha256:
        raise BundleError(
            f"model bundle {bundle.path}: SHA-256 of {bundle.weights_file} is {actual[:16]}..., "
            f"manifest says {bundle.weights_sha256[:16]}...; the weights were changed or damaged"
        )


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
