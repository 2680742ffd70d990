"""Model bundles: a Keras model file plus ``manifest.json`` describing how to use it.

A bundle is a folder::

    manifest.json   name, version, labels (the API's 11, in order), per-label
                    thresholds, input size and channels, normalisation, Grad-CAM
                    layer, intended use, training notes, weights file + SHA-256
    model.keras     any Keras 3 model (architecture and weights in one file)

``CXR_MODEL_DIR`` selects the bundle; the default is the demo bundle shipped in
``inference/bundles/demo``. The SHA-256 of the weights is checked at load, so a
truncated copy or a swapped file is refused with a clear :class:`BundleError`
instead of silently producing other numbers. This module does not import
TensorFlow: the API and the CLI can read a manifest cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import BundleError
from inference.labels import LABELS

MANIFEST_NAME = "manifest.json"
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "bundles" / "demo"
REQUIRED_KEYS = (
    "name",
    "version",
    "labels",
    "input_size",
    "weights_file",
    "weights_sha256",
    "gradcam_layer",
    "intended_use",
)


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    name: str
    version: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    input_size: tuple[int, int]
    channels: int
    normalization: dict[str, float]
    gradcam_layer: str
    logits_layer: str | None
    weights_file: str
    weights_sha256: str
    intended_use: str
    demo: bool
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)
    #: ``demo``, ``research``, ``cleared``, ... (machine-checkable; schema 1 derives it from ``demo``)
    clinical_status: str = "unspecified"

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
            "demo": self.demo,
        }


def bundle_dir_from_env() -> Path:
    value = os.environ.get("CXR_MODEL_DIR", "").strip()
    return Path(value) if value else DEFAULT_BUNDLE_DIR


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_bundle(path: Path | None = None, *, verify: bool = True) -> ModelBundle:
    """Read and validate a bundle's manifest (and, by default, its weights' SHA-256)."""
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
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"model bundle {root}: manifest lacks {', '.join(missing)}")
    labels = tuple(manifest["labels"])
    if labels != LABELS:
        raise BundleError(f"model bundle {root}: labels must be the API's 11 findings in order, got {list(labels)}")
    thresholds_raw = manifest.get("thresholds", {})
    thresholds = {name: float(thresholds_raw.get(name, 0.5)) for name in LABELS}
    bad = [n for n, t in thresholds.items() if not 0.0 < t < 1.0]
    if bad:
        raise BundleError(f"model bundle {root}: thresholds outside (0, 1) for {', '.join(bad)}")
    size = manifest["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise BundleError(f"model bundle {root}: input_size must be [height, width], got {size!r}")
    norm = manifest.get("normalization", {"mean": 0.0, "std": 1.0})
    bundle = ModelBundle(
        path=root,
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        labels=labels,
        thresholds=thresholds,
        input_size=(size[0], size[1]),
        channels=int(manifest.get("channels", 1)),
        normalization={"mean": float(norm.get("mean", 0.0)), "std": float(norm.get("std", 1.0)) or 1.0},
        gradcam_layer=str(manifest["gradcam_layer"]),
        logits_layer=manifest.get("logits_layer"),
        weights_file=str(manifest["weights_file"]),
        weights_sha256=str(manifest["weights_sha256"]).lower(),
        intended_use=str(manifest["intended_use"]),
        demo=bool(manifest.get("demo", False)),
        manifest=manifest,
        clinical_status=str(manifest.get("clinical_status") or ("demo" if manifest.get("demo") else "unspecified")),
    )
    if verify:
        verify_weights(bundle)
    return bundle


def verify_weights(bundle: ModelBundle) -> None:
    if not bundle.weights_path.is_file():
        raise BundleError(f"model bundle {bundle.path}: weights file {bundle.weights_file} not found")
    actual = sha256_file(bundle.weights_path)
    if actual != bundle.weights_sha256:
        raise BundleError(
            f"model bundle {bundle.path}: SHA-256 of {bundle.weights_file} is {actual[:16]}..., "
            f"manifest says {bundle.weights_sha256[:16]}...; the weights were changed or damaged"
        )


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
