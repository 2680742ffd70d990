"""Third-party-style model bundles for the tests and the bundle benchmark, built from Keras Applications with
``weights=None`` (no downloads): the shapes, nesting, preprocessing and heads of the
models a hospital owns, with random weights.

* ``xception_pneumonia``: Xception nested as a sub-model, 150 px RGB, Keras "tf"
  scaling, two logits NORMAL / PNEUMONIA (softmax applied by the engine);
* ``densenet_nih14``: DenseNet121 (CheXNet layout), 224 px, ImageNet mean/std, the 14
  NIH labels with a sigmoid in the graph;
* ``efficientnet_tb``: EfficientNetB0, 224 px, rescaling inside the graph (raw 0-255),
  three sigmoid outputs;
* ``tiny_pneumonia``: a small 3-channel, 2-label softmax CNN with a nested backbone, for
  the service test (a worker loads it in well under a second).

Random heads give probabilities near 0.5 whatever the image, which would make a parity
test pass for any preprocessing; ``spread_head`` rescales the last layer so that the
probabilities move with the image (the tests assert they do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inference.bundle import sha256_path, write_manifest

NIH14 = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH14_MAP: dict[str, Any] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": {"condition": "Pleural Effusion", "relation": "exact"},
    "Infiltration": "Infiltration",
    "Mass": {"condition": "Nodule/Mass", "relation": "narrower"},
    "Nodule": {"condition": "Nodule/Mass", "relation": "narrower"},
    "Pneumonia": None,
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": None,
    "Emphysema": None,
    "Fibrosis": "Fibrosis",
    "Pleural_Thickening": {"condition": "Pleural Thickening", "relation": "exact"},
    "Hernia": None,
}


def spread_head(model: Any, head: str, probe: np.ndarray, target_std: float = 1.0) -> None:
    """Scale layer ``head``'s kernel so its pre-activation outputs vary by about
    ``target_std`` across the ``probe`` batch (random weights alone barely move them)."""
    import keras

    layer = model.get_layer(head)
    features = keras.Model(model.inputs[0], layer.input)(probe)
    features = np.asarray(features, np.float64)
    kernel, bias = layer.get_weights()
    rng = np.random.default_rng(7)
    kernel = rng.standard_normal(kernel.shape)
    centred = features - features.mean(axis=0, keepdims=True)
    spread = float(np.std(centred @ kernel)) or 1.0
    kernel = kernel * target_std / spread
    bias = -(features.mean(axis=0) @ kernel)  # centred near 0: probabilities span both sides
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def probe_batch(size: int, n: int = 6, channels: int = 3, scale: float = 255.0) -> np.ndarray:
    """Phantom radiographs, as a model's raw input batch in [0, scale]."""
    import cv2

    from demo.phantoms import make_phantom

    images = [cv2.resize(make_phantom(900, i, size=2 * size).image, (size, size)) for i in range(n)]
    batch = np.stack([np.repeat(im[..., None], channels, axis=-1) for im in images]).astype(np.float32)
    return batch * scale


def build_xception(size: int = 150) -> Any:
    import keras

    keras.utils.set_random_seed(150)
    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3), name="image")
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, logits, name="xception_pneumonia")
    probe = keras.applications.xception.preprocess_input(probe_batch(size))
    spread_head(model, "logits", probe)
    return model


def build_densenet(size: int = 224) -> Any:
    import keras

    keras.utils.set_random_seed(121)
    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    probs = keras.layers.Dense(len(NIH14), activation="sigmoid", name="predictions")(base.output)
    model = keras.Model(base.input, probs, name="densenet121_nih14")
    probe = keras.applications.densenet.preprocess_input(probe_batch(size))
    spread_head(model, "predictions", probe)
    return model


def build_efficientnet(size: int = 224) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    probs = keras.layers.Dense(3, activation="sigmoid", name="predictions")(base.output)
    model = keras.Model(base.input, probs, name="efficientnetb0_tb")
    spread_head(model, "predictions", probe_batch(size))  # rescaling is in the graph: raw 0-255
    return model


def build_tiny(size: int = 64) -> Any:
    import keras
    from keras import layers

    keras.utils.set_random_seed(64)
    inner_in = keras.Input((size, size, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c1")(inner_in)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    backbone = keras.Model(inner_in, x, name="backbone")
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    model = keras.Model(inputs, layers.Dense(2, name="logits")(x), name="tiny_pneumonia")
    spread_head(model, "logits", probe_batch(size, scale=2.0) - 1.0)
    return model


def identity_block(name: str, status: str = "research") -> dict[str, Any]:
    return {
        "schema": 2,
        "name": name,
        "version": "1.0.0",
        "clinical_status": status,
        "intended_use": "TEST ONLY - random weights, NOT FOR CLINICAL USE",
        "provenance": {"training_data": "none (random weights)", "code_commit": "tests", "licence": "n/a"},
    }


def write_bundle(folder: Path, model: Any, manifest: dict[str, Any], weights_file: str = "model.keras") -> Path:
    """Save ``model`` into ``folder`` (``.keras``, ``.h5``, or a SavedModel folder when
    ``weights_file`` has no suffix) and write the manifest with its SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights_file
    if target.suffix in (".keras", ".h5"):
        model.save(target)
        fmt = "keras"
    else:
        model.export(str(target), verbose=False)
        fmt = "savedmodel"
        manifest = {**manifest, "signature": "serve"}
    write_manifest(
        folder,
        {**manifest, "format": fmt, "weights": {"file": weights_file, "sha256": sha256_path(target)}},
    )
    return folder


def xception_manifest(size: int = 150) -> dict[str, Any]:
    return {
        **identity_block("xception-pneumonia"),
        "input": {
            "size": [size, size],
            "channels": 3,
            "channel_order": "RGB",
            "resize": "stretch",
            "interpolation": "linear",
            "normalization": "keras_tf",
        },
        "output": {"labels": ["NORMAL", "PNEUMONIA"], "activation": "softmax", "normal_label": "NORMAL"},
        "label_map": {"NORMAL": None, "PNEUMONIA": {"condition": "Consolidation", "relation": "broader"}},
        "thresholds": {"PNEUMONIA": 0.5},
        "operating_points": {"high_sensitivity": {"thresholds": {"PNEUMONIA": 0.2}}},
        "gradcam": {"layer": "xception/block14_sepconv2_act"},
    }


def densenet_manifest(size: int = 224) -> dict[str, Any]:
    return {
        **identity_block("densenet121-nih14"),
        "input": {"size": [size, size], "channels": 3, "interpolation": "area", "normalization": "keras_torch"},
        "output": {"labels": list(NIH14), "activation": "none"},
        "label_map": NIH14_MAP,
        "gradcam": {"layer": "auto"},
    }


def efficientnet_manifest(size: int = 224) -> dict[str, Any]:
    return {
        **identity_block("efficientnetb0-tb"),
        "input": {"size": [size, size], "channels": 3, "interpolation": "cubic", "normalization": "in_model"},
        "output": {"labels": ["tb", "effusion", "cardiomegaly"], "activation": "none"},
        "label_map": {"tb": "Tuberculosis", "effusion": "Pleural Effusion", "cardiomegaly": "Cardiomegaly"},
        "gradcam": {"layer": "auto"},
    }


def tiny_manifest(size: int = 64) -> dict[str, Any]:
    manifest = xception_manifest(size)
    manifest.update(identity_block("tiny-pneumonia"))
    manifest["gradcam"] = {"layer": "backbone/c2"}
    manifest["label_map"] = {"NORMAL": None, "PNEUMONIA": {"condition": "Consolidation", "relation": "narrower"}}
    return manifest


RECIPES = {
    "xception": (build_xception, xception_manifest),
    "densenet": (build_densenet, densenet_manifest),
    "efficientnet": (build_efficientnet, efficientnet_manifest),
    "tiny": (build_tiny, tiny_manifest),
}


def main() -> None:
    """``python -m bench.app_models [--repeats N] [--out FILE]``: the bundle table of
    docs/performance.md: per-image forward + Grad-CAM time (batch 1, the worker's way),
    median of N after a warm-up, for each architecture at its size, with model load time."""
    import argparse
    import json
    import os
    import statistics
    import tempfile
    import time

    from demo.phantoms import make_phantom
    from inference.bundle import read_bundle
    from inference.predict import Predictor, configure_tensorflow

    parser = argparse.ArgumentParser(prog="python -m bench.app_models")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", default="demo,xception,densenet,efficientnet,tiny")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    info = configure_tensorflow()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "demo":
                from inference.bundle import DEFAULT_BUNDLE_DIR

                folder = DEFAULT_BUNDLE_DIR
            else:
                build, manifest = RECIPES[name]
                folder = write_bundle(Path(tmp) / name, build(), manifest())
            t = time.perf_counter()
            predictor = Predictor(read_bundle(folder))
            load_s = time.perf_counter() - t
            x = predictor.preprocess(make_phantom(3, 0, size=1024).image)[None]
            t = time.perf_counter()
            predictor.analyse_batch(x)
            trace_s = time.perf_counter() - t
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                predictor.analyse_batch(x)
                times.append((time.perf_counter() - t) * 1000.0)
            row = {
                "model": name,
                "input": f"{predictor.bundle.input_size[0]} x {predictor.bundle.input_size[1]} x {predictor.bundle.channels}",
                "gradcam_layer": predictor.gradcam_layer,
                "grid": list(predictor.analyse_batch(x)[0].heatmap.shape),
                "parameters": int(predictor.model.count_params()),
                "load_s": round(load_s, 2),
                "first_call_s": round(trace_s, 2),
                "min_ms": round(min(times), 1),
                "median_ms": round(statistics.median(times), 1),
                "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))], 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {"threads": info.get("threads"), "gpus": info.get("gpus"), "cpus": os.cpu_count(), "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
