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


def _mixed_policy() -> bool:
    import keras

    return bool(keras.mixed_precision.global_policy().name != "float32")


def load_model(bundle: ModelBundle) -> Any:
    """The bundle's model: a Keras model (``.keras``, legacy ``.h5``) or a SavedModel's
    serving signature wrapped as a Keras layer. Any failure is one BundleError line."""
    import keras

    try:
        if bundle.format == "savedmodel":
            return keras.layers.TFSMLayer(str(bundle.weights_path), call_endpoint=bundle.signature or "serving_default")
        return keras.models.load_model(bundle.weights_path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras and TensorFlow raise many types for a bad file
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise BundleError(
            f"model bundle {bundle.path}: cannot load {bundle.weights_file} as {bundle.format}: "
            f"{exc.__class__.__name__}{': ' + detail if detail else ''}"
        ) from None


def _functional(model: Any) -> Any:
    """A Sequential model's functional graph (built Sequential models keep one)."""
    import keras

    if isinstance(model, keras.Sequential):
        inner = getattr(model, "_functional", None)
        if inner is None:
            raise BundleError(f"Sequential model {model.name!r} is not built (no input shape)")
        return inner
    return model


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _spatial_4d(layer: Any) -> bool:
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):  # a layer called more than once has no single output
        return False
    return len(shape) == 4 and all(d is None or d > 1 for d in shape[1:3])


def resolve_layer_path(model: Any, path: str, *, where: str = "") -> str:
    """``path`` checked against ``model`` (``a/b/c`` enters nested models), or for
    ``auto`` the last layer whose output is a 4-D feature map with spatial size over 1,
    looking inside nested models. Raises BundleError naming what is missing."""
    prefix = f"model bundle {where}: " if where else ""
    if path == "auto":
        found = _last_feature_map(model)
        if found is None:
            raise BundleError(f"{prefix}gradcam.layer 'auto' found no 4-D feature map in the model")
        return found
    current = model
    parts = path.split("/")
    for depth, name in enumerate(parts):
        try:
            layer = _functional(current).get_layer(name)
        except ValueError:
            inside = "/".join(parts[:depth]) or "the model"
            raise BundleError(f"{prefix}gradcam layer {path!r} not found: no layer {name!r} in {inside}") from None
        if depth < len(parts) - 1 and not _is_model(layer):
            raise BundleError(f"{prefix}gradcam layer {path!r}: {name!r} is not a nested model")
        current = layer
    if not _spatial_4d(current):
        raise BundleError(f"{prefix}gradcam layer {path!r} does not output a 4-D feature map")
    return path


def _last_feature_map(model: Any) -> str | None:
    for layer in reversed(_functional(model).layers):
        if _is_model(layer):
            inner = _last_feature_map(layer)
            if inner is not None:
                return f"{layer.name}/{inner}"
        elif layer.__class__.__name__ != "InputLayer" and _spatial_4d(layer):
            return str(layer.name)
    return None


def feature_model(model: Any, path: str, outputs: list[Any]) -> Any:
    """A Keras model from ``model``'s inputs to ``[feature map at path, *outputs]``.

    A layer of a nested model has a symbolic output only inside that model's graph, so
    the outer graph is re-traced (``clone_model`` with the *same* layers, so the same
    weights) with the nested model's call replaced by one that also returns the
    feature map.
    """
    import keras

    graph = _functional(model)
    head, _, rest = path.partition("/")
    if not rest:
        return keras.Model(_single(graph.inputs), [graph.get_layer(head).output, *outputs])
    nested = graph.get_layer(head)
    inner = feature_model(nested, rest, [_functional(nested).output])
    captured: list[Any] = []

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer is nested:
            kwargs.pop("training", None)
            fmap, out = inner(*args, **kwargs)
            captured.append(fmap)
            return out
        return layer(*args, **kwargs)

    wanted = keras.Model(_single(graph.inputs), outputs)
    traced = keras.models.clone_model(wanted, clone_function=lambda layer: layer, call_function=call)
    if len(captured) != 1:
        raise BundleError(f"gradcam layer {path!r}: nested model {head!r} is called {len(captured)} times")
    return keras.Model(_single(traced.inputs), [captured[0], *traced.outputs])


def _single(inputs: Any) -> Any:
    """One input tensor as itself, not a list of one (Keras warns when a list-input
    model is called with a bare tensor)."""
    return inputs[0] if isinstance(inputs, (list, tuple)) and len(inputs) == 1 else inputs


def select_output(model: Any, bundle: ModelBundle) -> Any:
    """The model's output tensor the labels describe (``output.output_name`` if several)."""
    graph = _functional(model)
    output = graph.output
    if isinstance(output, dict):
        names, tensors = list(output), list(output.values())
    elif isinstance(output, (list, tuple)):
        tensors = list(output)
        names = list(getattr(graph, "output_names", None) or [t.name for t in tensors])
    else:
        return output
    if bundle.output_name is None:
        if len(tensors) == 1:
            return tensors[0]
        raise BundleError(
            f"model bundle {bundle.path}: the model has {len(tensors)} outputs {names}; set output.output_name"
        )
    if bundle.output_name not in names:
        raise BundleError(f"model bundle {bundle.path}: output.output_name {bundle.output_name!r} not in {names}")
    return tensors[names.index(bundle.output_name)]


def logits_tensor(model: Any, output: Any, bundle: ModelBundle) -> Any:
    """The pre-activation scores Grad-CAM differentiates (see :class:`Predictor`)."""
    import keras

    graph = _functional(model)
    if bundle.logits_layer:
        try:
            return graph.get_layer(bundle.logits_layer).output
        except ValueError:
            raise BundleError(f"model bundle {bundle.path}: no layer named {bundle.logits_layer!r}") from None
    if bundle.activation != "none":
        return output
    last = output._keras_history.operation if hasattr(output, "_keras_history") else None
    if last is None:
        return output
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if name not in ("sigmoid", "softmax"):
        return output
    if isinstance(last, keras.layers.Activation):
        return last.input
    config = last.get_config()
    config["activation"] = "linear"
    config["name"] = f"{last.name}_logits"
    twin = last.__class__.from_config(config)
    twin.build(tuple(last.input.shape))
    twin.set_weights(last.get_weights())
    return twin(last.input)


def _pick(result: Any, bundle: ModelBundle) -> Any:
    """A SavedModel signature's result (often a dict of outputs) -> the labels' tensor."""
    if isinstance(result, dict):
        if bundle.output_name is not None:
            if bundle.output_name not in result:
                raise BundleError(
                    f"model bundle {bundle.path}: output.output_name {bundle.output_name!r} not in {sorted(result)}"
                )
            return result[bundle.output_name]
        if len(result) != 1:
            raise BundleError(
                f"model bundle {bundle.path}: the signature has outputs {sorted(result)}; set output.output_name"
            )
        return next(iter(result.values()))
    if isinstance(result, (list, tuple)):
        if len(result) != 1:
            raise BundleError(
                f"model bundle {bundle.path}: the model has {len(result)} outputs; set output.output_name"
            )
        return result[0]
    return result


def _activate(raw: Any, activation: str) -> Any:
    import tensorflow as tf

    if activation == "sigmoid":
        return tf.sigmoid(raw)
    if activation == "softmax":
        return tf.nn.softmax(raw, axis=-1)
    return raw


def preprocess_image(
    pixels01: np.ndarray, bundle: ModelBundle, scale: np.float32, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """See :meth:`Predictor.preprocess`."""
    h, w = bundle.input_size
    img = np.rint(np.clip(np.nan_to_num(np.asarray(pixels01, np.float32)), 0.0, 1.0) * 255.0).astype(np.float32)
    flag = INTERPOLATION_FLAGS[bundle.interpolation]
    rows, cols = img.shape
    if bundle.resize == "center_crop" and (rows, cols) != (h, w):
        # The largest centred region with the input's aspect ratio, then resized.
        crop_h, crop_w = min(rows, round(cols * h / w)), min(cols, round(rows * w / h))
        top, left = (rows - crop_h) // 2, (cols - crop_w) // 2
        img = img[top : top + crop_h, left : left + crop_w]
    if bundle.resize == "letterbox" and (rows, cols) != (h, w):
        factor = min(h / rows, w / cols)
        new_h, new_w = max(1, min(h, round(rows * factor))), max(1, min(w, round(cols * factor)))
        small = cv2.resize(img, (new_w, new_h), interpolation=flag)
        img = np.zeros((h, w), np.float32)  # black padding: air, as a detector's edge
        top, left = (h - new_h) // 2, (w - new_w) // 2
        img[top : top + new_h, left : left + new_w] = small
    elif img.shape != (h, w):
        img = cv2.resize(img, (w, h), interpolation=flag)
    out = np.repeat(img[..., None], bundle.channels, axis=-1)
    out = (out * scale - mean) / std
    return np.ascontiguousarray(out, np.float32)


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


INTERPOLATION_FLAGS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}
SALIENCY_METHOD = "gradient-saliency"
GRADCAM_METHOD = "grad-cam"


class Predictor:
    """A bundle's model, loaded once, with compiled prediction and Grad-CAM functions.

    What it adds to the model (``docs/model-bundles.md``): the manifest's input contract
    (:meth:`preprocess`), the output activation the graph lacks, and the Grad-CAM
    target: the *logits* of the chosen label (a saturated sigmoid or softmax has no
    gradient). The logits are the manifest's ``gradcam.logits_layer``, else the model's
    output when the engine applies the activation, else the input of a final sigmoid or
    softmax (an ``Activation`` layer, or a ``Dense``/``Conv`` layer's own activation,
    recomputed linearly with the same weights), else the probability itself.

    A SavedModel exposes no layers, so no Grad-CAM: its heatmap is the input-gradient
    magnitude, pooled to a coarse grid (``heatmap_method`` says which).
    """

    def __init__(self, bundle: ModelBundle | None = None) -> None:
        import tensorflow as tf

        self.bundle = bundle if bundle is not None else read_bundle()
        b = self.bundle
        model = load_model(b)
        self.heatmap_method = SALIENCY_METHOD if b.format == "savedmodel" else GRADCAM_METHOD
        if b.format == "savedmodel":
            self.gradcam_layer = "input"
            self.model = model
            self._grad_model = None
        else:
            path = resolve_layer_path(model, b.gradcam_layer, where=str(b.path))
            self.gradcam_layer = path
            if "/" not in path:
                model = apply_global_policy(model, keep_float32_from=path)
            elif _mixed_policy():
                log.warning(
                    "mixed precision: the Grad-CAM layer %s is inside a nested model; computing in float32", path
                )
            self.model = model
            output = select_output(model, b)
            logits = logits_tensor(model, output, b)
            self._grad_model = feature_model(model, path, [logits, output])
        h, w = b.input_size
        c = b.channels
        self._thresholds = tf.constant([b.thresholds[n] for n in b.labels], tf.float32)
        self._eligible = tf.constant([n != b.normal_label for n in b.labels], tf.bool)
        norm = b.normalization
        self._scale = np.float32(norm["scale"])
        self._mean = np.asarray(norm["mean"], np.float32)
        self._std = np.asarray(norm["std"], np.float32)
        spec = tf.TensorSpec((None, h, w, c), tf.float32)
        self._analyse = tf.function(self._analyse_graph, input_signature=[spec], reduce_retracing=True)
        self._cam_for = tf.function(self._cam_for_graph, input_signature=[spec, tf.TensorSpec((None,), tf.int32)])
        self._predict = tf.function(self._probabilities, input_signature=[spec])
        self._check_output_shape()

    def _check_output_shape(self) -> None:
        import numpy as np_

        b = self.bundle
        h, w = b.input_size
        try:  # through the traced function: the trace is reused by predict_batch
            out = self._predict(np_.zeros((1, h, w, b.channels), np_.float32))
        except Exception as exc:  # noqa: BLE001 - a wrong input size or channel count, in many guises
            raise BundleError(
                f"model bundle {b.path}: the model does not take input.size {list(b.input_size)} x {b.channels} "
                f"channel(s) ({exc.__class__.__name__})"
            ) from None
        shape = tuple(out.shape)
        if shape != (1, len(b.labels)):
            raise BundleError(
                f"model bundle {b.path}: the model outputs shape {list(shape[1:])} per image, "
                f"the manifest lists {len(b.labels)} labels"
            )

    def _outputs(self, x: Any) -> Any:
        """(feature map or None, logits, probabilities) for a batch, in float32."""
        import tensorflow as tf

        if self._grad_model is None:
            raw = _pick(self.model(x), self.bundle)
            logits, fmap = raw, None
        else:
            fmap, logits, raw = self._grad_model(x, training=False)
            fmap = tf.cast(fmap, tf.float32)
        raw = tf.cast(raw, tf.float32)
        logits = tf.cast(logits, tf.float32)
        return fmap, logits, _activate(raw, self.bundle.activation)

    def _probabilities(self, x: Any) -> Any:
        import tensorflow as tf

        if self._grad_model is None:
            raw = tf.cast(_pick(self.model(x), self.bundle), tf.float32)
        else:
            raw = tf.cast(self._grad_model(x, training=False)[2], tf.float32)
        return _activate(raw, self.bundle.activation)

    # -- graphs -------------------------------------------------------------------------
    def _cam(self, tape: Any, fmap: Any, score: Any, x: Any) -> Any:
        import tensorflow as tf

        if fmap is None:  # SavedModel: input-gradient magnitude, pooled to a 1/8 grid
            grads = tf.reduce_sum(tf.abs(tape.gradient(score, x)), axis=-1, keepdims=True)
            return tf.nn.avg_pool2d(grads, 8, 8, "SAME")[..., 0]
        grads = tape.gradient(score, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))

    def _analyse_graph(self, x: Any) -> Any:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            fmap, logits, probs = self._outputs(x)
            if fmap is not None:
                tape.watch(fmap)
            # The heatmap's label: the highest-scoring present label, else the highest
            # label; the normal_label ("no finding") is never the heatmap's subject.
            present = (probs >= self._thresholds) & self._eligible
            masked = tf.where(present, probs, -1.0)
            eligible = tf.where(self._eligible, probs, -1.0)
            any_present = tf.reduce_any(present, axis=1)
            index = tf.where(any_present, tf.argmax(masked, axis=1), tf.argmax(eligible, axis=1))
            index = tf.cast(index, tf.int32)
            # Each image's score depends only on its own features, so one gradient of
            # the sum gives every image's map.
            score = tf.reduce_sum(tf.gather(logits, index, batch_dims=1))
        return probs, self._cam(tape, fmap, score, x), index

    def _cam_for_graph(self, x: Any, index: Any) -> Any:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            fmap, logits, _ = self._outputs(x)
            score = tf.reduce_sum(tf.gather(logits, index, batch_dims=1))
        return self._cam(tape, fmap, score, x)

    # -- public API -----------------------------------------------------------------------
    def preprocess(self, pixels01: np.ndarray) -> np.ndarray:
        """Display image in [0, 1] -> model input (h, w, channels), per the manifest.

        The engine's pixel steps end in the 8-bit display image: its values 0..255 (as
        float32, so resizing does not round again) are what a model trained on JPEG or
        PNG files saw. Then the manifest's geometry (``stretch``, ``letterbox`` with
        black padding, ``center_crop``) with its interpolation, grey copied to every
        channel, and ``(x * scale - mean) / std`` per channel.
        """
        return preprocess_image(pixels01, self.bundle, self._scale, self._mean, self._std)

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
