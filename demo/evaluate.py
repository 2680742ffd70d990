"""``cxr eval``: score a bundle on a held-out synthetic set.

The evaluation stream is the phantom generator with a seed offset that training
never uses (``EVALUATION_SEED_OFFSET``). Images are rendered at twice the model's
input size and go through the same ``Predictor.preprocess`` as real images.

* AUROC per condition and its mean.
* Pointing accuracy (the "pointing game"): for every localized condition present in
  an image, the Grad-CAM map *for that condition* is upsampled to the image and its
  maximum must fall inside the lesion's box. Reported over all such (image,
  condition) pairs, and per condition.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from demo.metrics import auroc
from demo.phantoms import LOCALIZED, make_phantom
from demo.train import EVALUATION_SEED_OFFSET
from inference.bundle import read_bundle
from inference.labels import LABELS
from inference.predict import Predictor

TARGETS = {"mean_auroc": 0.95, "min_auroc": 0.85, "pointing_accuracy": 0.8}


def evaluate(
    bundle_dir: Path | None = None, *, count: int = 600, seed: int = 20261129, batch_size: int = 32
) -> dict[str, Any]:
    t0 = time.perf_counter()
    predictor = Predictor(read_bundle(bundle_dir))
    h, w = predictor.bundle.input_size
    render = 2 * max(h, w)
    stream = seed + EVALUATION_SEED_OFFSET
    labels = np.zeros((count, len(LABELS)), np.float32)
    probs = np.zeros((count, len(LABELS)), np.float32)
    hits: dict[str, list[bool]] = {name: [] for name in LABELS if name in LOCALIZED}
    for start in range(0, count, batch_size):
        phantoms = [make_phantom(stream, i, size=render) for i in range(start, min(start + batch_size, count))]
        x = np.stack([predictor.preprocess(p.image) for p in phantoms])
        probs[start : start + len(phantoms)] = predictor.predict_batch(x)
        labels[start : start + len(phantoms)] = np.stack([p.labels for p in phantoms])
        pairs = [(k, LABELS.index(name), name) for k, p in enumerate(phantoms) for name in p.boxes if name in hits]
        if not pairs:
            continue
        cams = predictor.gradcam_for(x[[k for k, _, _ in pairs]], np.array([i for _, i, _ in pairs]))
        for (k, _, name), cam in zip(pairs, cams):
            hits[name].append(points_inside(cam, phantoms[k].boxes[name], render))
    scores = {name: auroc(labels[:, i], probs[:, i]) for i, name in enumerate(LABELS)}
    # A condition absent from a (small) evaluation set has no AUROC: null, not NaN.
    per_label = {name: (None if np.isnan(v) else round(v, 4)) for name, v in scores.items()}
    defined = [v for v in per_label.values() if v is not None]
    all_hits = [h_ for v in hits.values() for h_ in v]
    mean_auroc = round(float(np.mean(defined)), 4) if defined else None
    pointing = round(float(np.mean(all_hits)), 4) if all_hits else None
    result: dict[str, Any] = {
        "auroc": per_label,
        "mean_auroc": mean_auroc,
        "pointing_accuracy": pointing,
        "pointing_by_condition": {k: round(float(np.mean(v)), 4) for k, v in hits.items() if v},
        "pointing_pairs": len(all_hits),
        "images": count,
        "model": predictor.bundle.identity(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result["meets_targets"] = bool(
        len(defined) == len(LABELS)
        and (mean_auroc or 0.0) >= TARGETS["mean_auroc"]
        and min(defined) >= TARGETS["min_auroc"]
        and (pointing or 0.0) >= TARGETS["pointing_accuracy"]
    )
    return result


def points_inside(cam: np.ndarray, box: tuple[float, float, float, float], size: int) -> bool:
    """Whether the maximum of ``cam``, upsampled bilinearly to ``size``, lies in ``box``."""
    up = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    y, x = np.unravel_index(int(np.argmax(up)), up.shape)
    x0, y0, x1, y1 = box
    return bool(x0 * size <= x + 0.5 <= x1 * size and y0 * size <= y + 0.5 <= y1 * size)
