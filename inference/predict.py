"""Prediction and Grad-CAM for a loaded model bundle.

One forward-and-backward pass per batch does everything: probabilities for all
labels, the choice of the heatmap's finding (the highest-scoring *present* finding,
else the highest finding), and its Grad-CAM map. The work runs in ``tf.function``\\ s
with fixed input signatures, traced once per process, not ``model.predict`` per image.

TensorFlow is imported here and nowhere in the API: call :func:`configure_tensorflow`
before the first TensorFlow operation of a process (worker start-up, CLI start-up).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from inference.bundle import ModelBundle, read_bundle
from inference.errors import BundleError, InferenceError

log = logging.getLogger(__name__)

_configured = False
_config_lock = threading.Lock()


def mixed_precision_from_env() -> bool:
    """``CXR_MIXED_PRECISION`` is 1/true/yes/on: compute in float16 where Keras allows (GPU hosts)."""
    return os.environ.get("CXR_MIXED_PRECISION", "").strip().lower() in {"1", "true", "yes", "on"}


def configure_tensorflow(
    threads: int | None = None, *, deterministic: bool = True, mixed_precision: bool | None = None
) -> dict[str, Any]:
    """Size TensorFlow's thread pools and set reproducibility; idempotent per process.

    ``threads`` defaults to ``CXR_TF_THREADS`` or the cores this process may use.
    OpenCV's thread pool (resizes, colour maps, blending) gets the same size: N worker
    processes each using every core would oversubscribe the CPU just as TensorFlow would.
    On GPU hosts memory growth is enabled so several processes can share a card.
    ``mixed_precision`` defaults to ``CXR_MIXED_PRECISION``; it sets Keras' global
    ``mixed_float16`` policy, so it must run before the model is loaded.
    Returns what was set, for logging.
    """
    global _configured
    import tensorflow as tf

    with _config_lock:
        if threads is None:
            env = os.environ.get("CXR_TF_THREADS", "").strip()
            threads = int(env) if env else len(os.sched_getaffinity(0))
        info: dict[str, Any] = {"threads": threads, "deterministic": deterministic}
        if _configured:
            return info
        cv2.setNumThreads(threads)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow already initialised in this process
            log.warning("TensorFlow was initialised before configure_tensorflow; thread pools unchanged")
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # the device was initialised first: it keeps its allocator
                log.warning("memory growth not enabled on %s: TensorFlow initialised it first", gpu.name)
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        if mixed_precision is None:
            mixed_precision = mixed_precision_from_env()
        if mixed_precision:
            import keras

            keras.mixed_precision.set_global_policy("mixed_float16")
        info["mixed_precision"] = mixed_precision
        _configured = True
        return info


def apply_global_policy(model: Any, *, keep_float32_from: str | None = None) -> Any:
    """``model`` computing under Keras' global dtype policy (``mixed_float16`` when
    ``configure_tensorflow`` enabled mixed precision); the model itself when it is float32.

    A loaded model keeps the policy its layers were saved with, whatever the global
    policy says, so mixed precision needs a copy built with the policy and given the
    same weights. Layers from ``keep_float32_from`` (the Grad-CAM layer) on stay float32:
    Grad-CAM differentiates the score by that layer's output, and the small head costs
    little in float32.
    """
    import keras

    policy = keras.mixed_precision.global_policy().name
    if policy == "float32":
        return model
    names = [layer.name for layer in model.layers]
    keep = set(names[names.index(keep_float32_from) :]) if keep_float32_from in names else set()

    def rebuild(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name in keep else policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return copy


@dataclass
class Analysis:
    """Model output for one image."""

    probabilities: np.ndarray  # float32 (n_labels,)
    heatmap: np.ndarray  # float32 (h, w) in [0, 1], at the Grad-CAM layer's resolution
    heatmap_index: int
    timings_ms: dict[str, float]


def normalise_heatmap(cam: np.ndarray) -> np.ndarray:
    """ReLU'd class activation map scaled to [0, 1]; NaN/inf and all-zero maps give zeros."""
    cam = np.nan_to_num(np.asarray(cam, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    return cam / peak if peak > 0 else np.zeros_like(cam)


class Predictor:
    """A bundle's model, loaded once, with compiled prediction and Grad-CAM functions."""

    def __init__(self, bundle: ModelBundle | None = None) -> None:
        import keras
        import tensorflow as tf

        self.bundle = bundle if bundle is not None else read_bundle()
        try:
            model = keras.models.load_model(self.bundle.weights_path, compile=False)
        except Exception as exc:  # Keras raises many types for a bad file
            raise BundleError(
                f"model bundle {self.bundle.path}: cannot load {self.bundle.weights_file}: {exc.__class__.__name__}"
            ) from exc
        model = apply_global_policy(model, keep_float32_from=self.bundle.gradcam_layer)
        self.model = model
        try:
            cam_layer = model.get_layer(self.bundle.gradcam_layer)
        except ValueError:
            raise BundleError(
                f"model bundle {self.bundle.path}: no layer named {self.bundle.gradcam_layer!r}"
            ) from None
        logits = model.get_layer(self.bundle.logits_layer).output if self.bundle.logits_layer else model.output
        self._grad_model = keras.Model(model.inputs, [cam_layer.output, logits, model.output])
        h, w = self.bundle.input_size
        c = self.bundle.channels
        self._thresholds = tf.constant([self.bundle.thresholds[n] for n in self.bundle.labels], tf.float32)
        spec = tf.TensorSpec((None, h, w, c), tf.float32)
        self._analyse = tf.function(self._analyse_graph, input_signature=[spec], reduce_retracing=True)
        self._cam_for = tf.function(self._cam_for_graph, input_signature=[spec, tf.TensorSpec((None,), tf.int32)])
        self._predict = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])

    # -- graphs -------------------------------------------------------------------------
    def _cam(self, tape: Any, fmap: Any, score: Any) -> Any:
        import tensorflow as tf

        grads = tape.gradient(score, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))

    def _analyse_graph(self, x: Any) -> Any:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            fmap, logits, probs = self._grad_model(x, training=False)
            fmap = tf.cast(fmap, tf.float32)
            tape.watch(fmap)
            logits = tf.cast(logits, tf.float32)
            probs = tf.cast(probs, tf.float32)
            present = probs >= self._thresholds
            masked = tf.where(present, probs, -1.0)
            any_present = tf.reduce_any(present, axis=1)
            index = tf.where(any_present, tf.argmax(masked, axis=1), tf.argmax(probs, axis=1))
            index = tf.cast(index, tf.int32)
            # Each image's score depends only on its own features, so one gradient of
            # the sum gives every image's map.
            score = tf.reduce_sum(tf.gather(logits, index, batch_dims=1))
        return probs, self._cam(tape, fmap, score), index

    def _cam_for_graph(self, x: Any, index: Any) -> Any:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            fmap, logits, _ = self._grad_model(x, training=False)
            fmap = tf.cast(fmap, tf.float32)
            score = tf.reduce_sum(tf.gather(tf.cast(logits, tf.float32), index, batch_dims=1))
        return self._cam(tape, fmap, score)

    # -- public API -----------------------------------------------------------------------
    def preprocess(self, pixels01: np.ndarray) -> np.ndarray:
        """Display image in [0, 1] -> model input (h, w, channels), normalised per manifest.

        The image is resized to the input size without keeping the aspect ratio
        (as in training); INTER_AREA avoids aliasing on large detectors.
        """
        h, w = self.bundle.input_size
        img: np.ndarray = np.asarray(pixels01, np.float32)
        if img.shape != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        img = (img - self.bundle.normalization["mean"]) / self.bundle.normalization["std"]
        img = img[..., None]
        if self.bundle.channels > 1:
            img = np.repeat(img, self.bundle.channels, axis=-1)
        return np.ascontiguousarray(img, np.float32)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (n, n_labels) for preprocessed inputs (n, h, w, c)."""
        return np.asarray(self._predict(np.asarray(batch, np.float32)), np.float32)

    def analyse_batch(self, batch: np.ndarray) -> list[Analysis]:
        """Probabilities, heatmap finding and Grad-CAM map for preprocessed inputs."""
        start = time.perf_counter()
        try:
            probs, cams, index = self._analyse(np.asarray(batch, np.float32))
        except Exception as exc:  # a TensorFlow runtime error on one batch
            raise InferenceError(f"model failed: {exc.__class__.__name__}") from exc
        per_image = (time.perf_counter() - start) * 1000.0 / max(len(batch), 1)
        probs_np, cams_np, idx_np = probs.numpy(), cams.numpy(), index.numpy()
        return [
            Analysis(
                np.nan_to_num(probs_np[i], nan=0.0),
                normalise_heatmap(cams_np[i]),
                int(idx_np[i]),
                {"forward_gradcam": round(per_image, 2)},
            )
            for i in range(len(batch))
        ]

    def gradcam_for(self, batch: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Grad-CAM maps (n, h, w) in [0, 1] for a given label index per image."""
        cams = self._cam_for(np.asarray(batch, np.float32), np.asarray(indices, np.int32)).numpy()
        return np.stack([normalise_heatmap(c) for c in cams])
