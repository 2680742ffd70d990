"""The benchmark's production-sized model bundle: DenseNet121 with random weights.

The demo network (85 k parameters) costs a few milliseconds a forward pass, so it says
nothing about the compute of a real chest X-ray model. DenseNet121 at 224 px (8 M
parameters, the CheXNet architecture) does. Its weights are random (``weights=None``):
the bench measures time, never accuracy. The bundle is built on first use into
``var/bench/bundles/densenet121`` (gitignored, about 30 MB, never committed) and reused
while its manifest and checksum verify.

Layout: one grey input channel (the pipeline's preprocessing gives (224, 224, 1)),
DenseNet121's feature extractor, global average pooling, an 11-unit ``logits`` layer
and a sigmoid; Grad-CAM on ``relu``, DenseNet121's last feature map (7 x 7 x 1024).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from inference.bundle import ModelBundle, read_bundle, sha256_file, write_manifest
from inference.errors import BundleError
from inference.labels import LABELS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DENSENET_DIR = ROOT / "var" / "bench" / "bundles" / "densenet121"
INPUT_SIZE = 224


def densenet_bundle(path: Path = DENSENET_DIR) -> ModelBundle:
    """The DenseNet121 bundle at ``path``, built there first if missing or damaged."""
    try:
        return read_bundle(path)
    except BundleError as exc:
        log.info("building the DenseNet121 bench bundle (%s)", exc)
    build_densenet_bundle(path)
    return read_bundle(path)


def build_densenet_bundle(path: Path, seed: int = 121) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="image")
    # Built on the input tensor (not nested as one layer), so that the Grad-CAM layer is
    # reachable by name from the outer model.
    base = keras.applications.DenseNet121(include_top=False, weights=None, input_tensor=inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    logits = keras.layers.Dense(len(LABELS), name="logits")(pooled)
    probs = keras.layers.Activation("sigmoid", name="probabilities")(logits)
    model = keras.Model(inputs, probs, name="densenet121_bench")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    model.save(path / "model.keras")
    write_manifest(
        path,
        {
            "name": "densenet121-bench-random",
            "version": "0",
            "demo": True,
            "intended_use": "BENCHMARK ONLY - random weights, meaningless outputs; NOT FOR CLINICAL USE.",
            "labels": list(LABELS),
            "thresholds": {name: 0.5 for name in LABELS},
            "input_size": [INPUT_SIZE, INPUT_SIZE],
            "channels": 1,
            "normalization": {"mean": 0.5, "std": 0.25, "input": "display-polarity image in [0, 1]"},
            "gradcam_layer": "relu",
            "logits_layer": "logits",
            "weights_file": "model.keras",
            "weights_sha256": sha256_file(path / "model.keras"),
            "training": {
                "data": "none: random weights (keras.applications.DenseNet121, weights=None)",
                "seed": seed,
                "parameters": int(model.count_params()),
            },
        },
    )
