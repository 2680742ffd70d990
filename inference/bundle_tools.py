"""Bundle tools: the full check of a bundle (``cxr bundle check``, worker start) and the
writer of a new schema-2 bundle around a model file (``cxr bundle init``).

The check goes past the manifest (``inference.bundle``): it loads the model, resolves the
Grad-CAM layer, runs a probe image (and a real DICOM file when given) through the
engine's own preprocessing, and checks the output shape against the labels, that the
probabilities are finite and in [0, 1], and that the heatmap is finite. Any problem is a
:class:`BundleError` with one line.

A worker's main process must not initialise TensorFlow (its children fork from it), so
it runs the check in a child interpreter (``python -m inference.bundle_tools check DIR``)
and refuses to start on a failure. A check that passed is remembered for the same
manifest, weights, operating point and library versions (a stamp file in
``CXR_BUNDLE_CHECK_CACHE``, default ``<tmp>/cxr-bundle-checks``), so restarting workers
does not pay the 5-10 s again for bytes already checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.bundle import (
    DEFAULT_OPERATING_POINT,
    MANIFEST_NAME,
    SCHEMA,
    TODO,
    ModelBundle,
    read_bundle,
    sha256_path,
    write_manifest,
)
from inference.errors import BundleError, CxrError

PROBE_SIZE = 512


def probe_image(size: int = PROBE_SIZE) -> np.ndarray:
    """A smooth synthetic chest-like image in [0, 1]: dark lungs, bright mediastinum."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    lungs = np.exp(-(((cols - 0.3) / 0.15) ** 2 + ((rows - 0.5) / 0.3) ** 2))
    lungs += np.exp(-(((cols - 0.7) / 0.15) ** 2 + ((rows - 0.5) / 0.3) ** 2))
    return np.clip(0.8 - 0.6 * lungs + 0.05 * np.sin(rows * 40), 0.0, 1.0).astype(np.float32)


def check_bundle(path: Path | None = None, *, dicom: Path | None = None, repeats: int = 3) -> dict[str, Any]:
    """Load, probe and check a bundle; return what was found (label map, timings).

    Raises BundleError (one line) on any problem, including a DICOM file the engine
    refuses (its skip reason is named).
    """
    from inference.predict import Predictor, configure_tensorflow

    bundle = read_bundle(path)  # manifest, SHA-256 and the file first: no TensorFlow needed to refuse those
    images = {"probe": probe_image()}
    if dicom is not None:
        from inference.dicom_read import ReadOptions, read_dicom_image

        try:
            images[str(dicom)] = read_dicom_image(Path(dicom), ReadOptions.from_env()).pixels
        except CxrError as exc:
            raise BundleError(f"check file {dicom}: the engine refuses it ({exc.reason}: {exc.detail})") from None
    configure_tensorflow()
    t = time.perf_counter()
    try:
        predictor = Predictor(bundle)
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else Keras raises while wiring the graph
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        raise BundleError(
            f"model bundle {bundle.path}: the model cannot be prepared ({exc.__class__.__name__}: {detail})"
        ) from None
    load_s = time.perf_counter() - t
    results = {}
    for name, pixels in images.items():
        x = predictor.preprocess(pixels)[None]
        analysis = predictor.analyse_batch(x)[0]  # first call traces the graph
        start = time.perf_counter()
        for _ in range(repeats):
            analysis = predictor.analyse_batch(x)[0]
        per_image_ms = (time.perf_counter() - start) * 1000.0 / repeats
        raw = np.asarray(predictor.predict_batch(x)[0], np.float64)
        _check_outputs(bundle, name, raw, analysis.heatmap)
        results[name] = {
            "probabilities": {label: round(float(p), 4) for label, p in zip(bundle.labels, raw)},
            "heatmap_label": bundle.labels[analysis.heatmap_index],
            "heatmap_grid": list(analysis.heatmap.shape),
            "forward_gradcam_ms": round(per_image_ms, 1),
        }
    return {
        "bundle": str(bundle.path),
        "identity": bundle.identity(),
        "format": bundle.format,
        "input": {
            "size": list(bundle.input_size),
            "channels": bundle.channels,
            "resize": bundle.resize,
            "interpolation": bundle.interpolation,
            "normalization": bundle.normalization.get("preset") or "explicit",
        },
        "labels": list(bundle.labels),
        "activation": bundle.activation,
        "label_map": bundle.label_map_json(),
        "not_assessed": [c for c in _conditions() if c not in bundle.assessed_conditions()],
        "thresholds": bundle.thresholds,
        "operating_points": list(bundle.operating_points),
        "heatmap": {"method": predictor.heatmap_method, "layer": predictor.gradcam_layer},
        "load_s": round(load_s, 2),
        "images": results,
    }


def _conditions() -> tuple[str, ...]:
    from inference.labels import LABELS

    return LABELS


def _check_outputs(bundle: ModelBundle, name: str, probs: np.ndarray, heatmap: np.ndarray) -> None:
    where = f"model bundle {bundle.path}: on the {name} image"
    if probs.shape != (len(bundle.labels),):
        raise BundleError(f"{where} the model gave {probs.shape} outputs for {len(bundle.labels)} labels")
    if not np.isfinite(probs).all():
        raise BundleError(f"{where} the probabilities are not finite (NaN or inf)")
    if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        hint = "set output.activation to sigmoid or softmax" if bundle.activation == "none" else "check the activation"
        raise BundleError(
            f"{where} the outputs lie in [{probs.min():.3g}, {probs.max():.3g}], not [0, 1]: "
            f"they are not probabilities ({hint})"
        )
    if not np.isfinite(heatmap).all() or heatmap.ndim != 2:
        raise BundleError(f"{where} the heatmap is not a finite 2-D map")


# -- the worker's start-up check, in a child interpreter, remembered when it passed ------
def _stamp(path: Path, operating_point: str) -> Path:
    import importlib.metadata as md

    bundle = read_bundle(path)  # manifest problems and a bad SHA: fast, no child needed
    digest = hashlib.sha256()
    digest.update((bundle.path / MANIFEST_NAME).read_bytes())
    digest.update(bundle.weights_sha256.encode())
    digest.update(operating_point.encode())
    for dist in ("tensorflow", "keras"):
        try:
            digest.update(f"{dist}={md.version(dist)}".encode())
        except md.PackageNotFoundError:
            digest.update(f"{dist}=none".encode())
    cache = os.environ.get("CXR_BUNDLE_CHECK_CACHE", "").strip() or os.path.join(
        tempfile.gettempdir(), "cxr-bundle-checks"
    )
    return Path(cache) / f"{digest.hexdigest()}.ok"


def check_in_child(path: Path, operating_point: str, timeout: float = 300.0) -> bool:
    """Full check of ``path`` in a child interpreter (this process keeps TensorFlow out).

    Returns True when it ran, False when a stamp says these bytes already passed.
    Raises BundleError with the child's one-line reason on failure.
    """
    stamp = _stamp(path, operating_point)
    if stamp.is_file():
        return False
    env = dict(os.environ, CXR_MODEL_DIR=str(path), CXR_OPERATING_POINT=operating_point)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CXR_TF_THREADS", "1")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "inference.bundle_tools", "check", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BundleError(f"model bundle {path}: the check did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error: ")]
        reason = lines[-1][len("error: ") :] if lines else (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BundleError(reason)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(done.stdout[-4000:], encoding="utf-8")
    except OSError:  # an unwritable cache only costs the check next time
        pass
    return True


# -- cxr bundle init -----------------------------------------------------------------
def init_bundle(
    model_path: Path,
    out: Path,
    labels: list[str],
    *,
    preset: str = "unit",
    activation: str = "none",
    name: str | None = None,
    signature: str | None = None,
) -> dict[str, Any]:
    """Write a schema-2 bundle around ``model_path`` into ``out`` (which must not exist).

    Size and channels come from the model's input, the Grad-CAM layer is found
    (``auto`` resolved to a path), the SHA-256 written. The label map and the clinical
    status are left as TODO: the loader refuses the bundle until a person fills them in.
    """
    import keras

    from inference.predict import _last_feature_map, configure_tensorflow

    configure_tensorflow()
    model_path = Path(model_path)
    if out.exists():
        raise BundleError(f"{out} already exists; choose a new folder")
    if not labels or len(set(labels)) != len(labels):
        raise BundleError("--labels must list the model's output labels, each once, in output order")
    is_savedmodel = model_path.is_dir()
    if is_savedmodel:
        fmt, weights_file = "savedmodel", model_path.name
        spec = _savedmodel_input(model_path, signature or "serving_default")
        gradcam_layer = "input"  # a SavedModel has no layers: gradient saliency (docs/model-bundles.md)
        n_out = None
    else:
        if model_path.suffix not in (".keras", ".h5"):
            raise BundleError(f"{model_path}: a .keras or .h5 file, or a SavedModel folder, is needed")
        fmt, weights_file = "keras", model_path.name
        try:
            model = keras.models.load_model(model_path, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
            raise BundleError(f"{model_path}: cannot load ({exc.__class__.__name__})") from None
        shape = tuple(model.inputs[0].shape)
        spec = (shape[1], shape[2], shape[3]) if len(shape) == 4 else None
        gradcam_layer = _last_feature_map(model) or "auto"
        n_out = int(model.outputs[0].shape[-1]) if len(model.outputs) == 1 else None
    if spec is None or spec[0] is None or spec[1] is None:
        raise BundleError(f"{model_path}: the model's input has no fixed (height, width, channels) shape")
    if spec[2] not in (1, 3):
        raise BundleError(f"{model_path}: the model takes {spec[2]} channels; the engine feeds 1 or 3")
    if n_out is not None and n_out != len(labels):
        raise BundleError(f"{model_path}: the model outputs {n_out} values, --labels gives {len(labels)}")
    out.mkdir(parents=True)
    if is_savedmodel:
        shutil.copytree(model_path, out / weights_file)
    else:
        shutil.copy2(model_path, out / weights_file)
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name or model_path.stem,
        "version": "0.0.0",
        "clinical_status": TODO,
        "intended_use": "TODO: who may use it, for what, on which images; say NOT FOR CLINICAL USE unless cleared",
        "provenance": {"training_data": TODO, "code_commit": TODO, "licence": TODO},
        "format": fmt,
        "weights": {"file": weights_file, "sha256": sha256_path(out / weights_file)},
        "input": {
            "size": [int(spec[0]), int(spec[1])],
            "channels": int(spec[2]),
            "channel_order": "RGB",
            "resize": "stretch",
            "interpolation": "area",
            "normalization": preset,
        },
        "output": {"labels": labels, "activation": activation},
        "label_map": {label: TODO for label in labels},
        "thresholds": {label: 0.5 for label in labels},
        "operating_points": {},
        "gradcam": {"layer": gradcam_layer},
    }
    if is_savedmodel:
        manifest["signature"] = signature or "serving_default"
    write_manifest(out, manifest)
    return manifest


def _savedmodel_input(path: Path, signature: str) -> tuple[Any, ...] | None:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures.get(signature)
    if fn is None:
        raise BundleError(f"{path}: no serving signature {signature!r} (it has {sorted(loaded.signatures)})")
    specs = list(fn.structured_input_signature[1].values())
    if len(specs) != 1 or len(specs[0].shape) != 4:
        return None
    return tuple(specs[0].shape[1:])


def main(argv: list[str] | None = None) -> int:
    """``python -m inference.bundle_tools check DIR``: what a worker's main process runs."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "check":
        print("usage: python -m inference.bundle_tools check DIR", file=sys.stderr)
        return 2
    try:
        report = check_bundle(Path(args[1]))
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: report[k] for k in ("bundle", "heatmap", "load_s")}))
    return 0


__all__ = ["DEFAULT_OPERATING_POINT", "check_bundle", "check_in_child", "init_bundle", "probe_image"]

if __name__ == "__main__":
    sys.exit(main())
