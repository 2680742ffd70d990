"""Real third-party-style models through the engine: preprocessing parity with Keras's own
pipeline, the other file formats, Grad-CAM inside nested models, and model-level refusals.

The models are Keras Applications built with ``weights=None`` (``bench/app_models.py``),
once per session. Parity: the engine reads a DICOM made from an 8-bit PNG; the reference
takes the PNG's pixels, resizes them with the manifest's interpolation and applies the
architecture's own ``keras.applications.<arch>.preprocess_input``, then calls the same
model. A second reference reads the PNG with ``keras.utils.load_img`` (PIL's resampling,
as a training script that used it would).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inference.bundle import read_bundle
from inference.dicom_read import read_dicom_image
from inference.errors import BundleError
from inference.predict import INTERPOLATION_FLAGS, Predictor, preprocess_image, resolve_layer_path

#: arch -> (keras.applications module, load_img interpolation, activation the reference applies)
REFERENCES = {
    "xception": ("xception", "bilinear", "softmax"),
    "densenet": ("densenet", "bilinear", None),  # PIL downscales with an antialiased filter: closest to area
    "efficientnet": ("efficientnet", "bicubic", None),
}
PARITY_ATOL = 1e-4
LOAD_IMG_ATOL = 0.02


@pytest.fixture(scope="module")
def predictors(app_bundles: Any) -> dict[str, Predictor]:
    return {}


def _predictor(cache: dict[str, Predictor], app_bundles: Any, name: str) -> Predictor:
    if name not in cache:
        cache[name] = Predictor(read_bundle(app_bundles(name)))
    return cache[name]


def _reference(predictor: Predictor, arch: str, *rgb255: np.ndarray) -> list[np.ndarray]:
    """The architecture's own preprocess_input and the model, on a batch of RGB images."""
    import keras

    module, _, activation = REFERENCES[arch]
    x = getattr(keras.applications, module).preprocess_input(np.stack(rgb255).astype(np.float32))
    out = np.asarray(predictor.model(x), np.float64)
    if activation == "softmax":
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    return list(out)


@pytest.mark.slow  # builds full-size DenseNet121, Xception and EfficientNetB0: make test, not test-fast
@pytest.mark.parametrize("arch", list(REFERENCES))
def test_engine_matches_the_keras_preprocess_input_pipeline(
    arch: str, predictors: dict[str, Predictor], app_bundles: Any, parity_files: tuple[Path, Path]
) -> None:
    import keras

    png, dicom = parity_files
    predictor = _predictor(predictors, app_bundles, arch)
    bundle = predictor.bundle
    h, w = bundle.input_size
    engine = np.asarray(predictor.predict_batch(predictor.preprocess(read_dicom_image(dicom).pixels)[None])[0])

    grey = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    resized = np.repeat(
        cv2.resize(grey, (w, h), interpolation=INTERPOLATION_FLAGS[bundle.interpolation])[..., None], 3, -1
    )
    pil = keras.utils.img_to_array(
        keras.utils.load_img(png, color_mode="rgb", target_size=(h, w), interpolation=REFERENCES[arch][1])
    )
    reference, from_pil, other = _reference(predictor, arch, resized, pil, np.full((h, w, 3), 40.0, np.float32))
    diff = float(np.abs(engine - reference).max())
    assert diff <= PARITY_ATOL, f"{arch}: engine vs preprocess_input differ by {diff:.2e}"
    pil_diff = float(np.abs(engine - from_pil).max())
    assert pil_diff <= LOAD_IMG_ATOL, f"{arch}: engine vs load_img differ by {pil_diff:.4f}"

    # The comparison has teeth: the outputs move with the image, and the wrong
    # preprocessing (plain [0, 1] scaling) is far outside the tolerance.
    assert float(np.abs(other - reference).max()) > 0.05
    if arch != "efficientnet":  # its rescaling is in the graph: [0, 1] input is just another image
        wrong = np.asarray(predictor.model((resized / 255.0)[None]), np.float64)[0]
        if REFERENCES[arch][2] == "softmax":
            wrong = np.exp(wrong) / np.exp(wrong).sum()
        assert float(np.abs(wrong - reference).max()) > 10 * PARITY_ATOL
    print(f"parity {arch}: preprocess_input {diff:.1e}, load_img {pil_diff:.4f}")


def test_gradcam_enters_a_nested_model(predictors: dict[str, Predictor], app_bundles: Any) -> None:
    predictor = _predictor(predictors, app_bundles, "xception")
    assert predictor.gradcam_layer == "xception/block14_sepconv2_act"
    assert resolve_layer_path(predictor.model, "auto") == "xception/block14_sepconv2_act"
    from demo.phantoms import make_phantom

    x = np.stack([predictor.preprocess(make_phantom(8, i, size=300).image) for i in range(3)])
    for analysis in predictor.analyse_batch(x):
        assert analysis.heatmap.shape == (5, 5)
        assert np.isfinite(analysis.heatmap).all()
        assert analysis.heatmap.min() >= 0.0 and analysis.heatmap.max() <= 1.0
        assert analysis.heatmap_index == 1  # PNEUMONIA: the normal label is never the heatmap's subject
        assert analysis.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_nested_gradcam_equals_the_hand_computed_map(app_bundles: Any) -> None:
    """The re-traced graph's feature map and gradient are the nested model's own: the
    map equals Grad-CAM computed by hand on the backbone and the head."""
    import tensorflow as tf

    predictor = Predictor(read_bundle(app_bundles("tiny")))
    assert predictor.gradcam_layer == "backbone/c2"
    from demo.phantoms import make_phantom

    x = predictor.preprocess(make_phantom(9, 1, size=128).image)[None]
    model = predictor.model
    with tf.GradientTape() as tape:
        fmap = model.get_layer("backbone")(x)
        tape.watch(fmap)
        logits = model.get_layer("logits")(model.get_layer("pool")(fmap))
        score = logits[:, 1]
    grads = tape.gradient(score, fmap)
    cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * fmap, axis=-1))[0].numpy()
    expected = cam / cam.max() if cam.max() > 0 else cam
    got = predictor.gradcam_for(x, np.array([1]))[0]
    assert got.shape == (16, 16)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_h5_and_savedmodel_agree_with_their_keras_twin(tmp_path: Path) -> None:
    import keras

    from bench import app_models as mb

    model = mb.build_tiny()
    twins = {
        fmt: Predictor(read_bundle(mb.write_bundle(tmp_path / fmt.replace(".", ""), model, mb.tiny_manifest(), name)))
        for fmt, name in (("keras", "model.keras"), ("h5", "model.h5"), ("savedmodel", "saved_model"))
    }
    assert twins["savedmodel"].bundle.format == "savedmodel"
    assert isinstance(twins["savedmodel"].model, keras.layers.TFSMLayer)
    from demo.phantoms import make_phantom

    x = np.stack([twins["keras"].preprocess(make_phantom(10, i, size=128).image) for i in range(3)])
    want = twins["keras"].predict_batch(x)
    assert float(np.ptp(want[:, 1])) > 0.01  # the images give different answers
    for fmt in ("h5", "savedmodel"):
        np.testing.assert_allclose(twins[fmt].predict_batch(x), want, atol=1e-5, err_msg=fmt)
    saliency = twins["savedmodel"].analyse_batch(x)
    assert twins["savedmodel"].heatmap_method == "gradient-saliency"
    for analysis in saliency:
        assert analysis.heatmap.shape == (8, 8) and np.isfinite(analysis.heatmap).all()
        assert 0.0 <= analysis.heatmap.min() and analysis.heatmap.max() == pytest.approx(1.0)


def _edited(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for dotted, value in changes.items():
        node = manifest
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gradcam__layer": "backbone/nope"}, "gradcam layer 'backbone/nope' not found: no layer 'nope' in backbone"),
        ({"gradcam__layer": "pool"}, "does not output a 4-D feature map"),
        (
            {"output__labels": ["A", "B", "C"], "label_map": {}, "thresholds": {}, "operating_points": {}},
            "outputs shape [2] per image, the manifest lists 3 labels",
        ),
        ({"input__size": [32, 32]}, "the model does not take input.size [32, 32]"),
    ],
)
def test_model_level_problems_are_one_clear_line(
    app_bundles: Any, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    changes = dict(changes)
    if "output__labels" in changes:
        changes["output__normal_label"] = None
    bundle_dir = _edited(app_bundles("tiny"), tmp_path / "b", **changes)
    with pytest.raises(BundleError) as info:
        Predictor(read_bundle(bundle_dir))
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith(f"model bundle {bundle_dir}")


def test_outputs_that_are_not_probabilities_fail_the_check(app_bundles: Any, tmp_path: Path) -> None:
    """Logits declared as probabilities (activation none) are caught by the probe."""
    from inference.bundle_tools import check_bundle

    bundle_dir = _edited(app_bundles("tiny"), tmp_path / "b", output__activation="none")
    with pytest.raises(BundleError, match=r"not probabilities \(set output.activation to sigmoid or softmax\)"):
        check_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("resize", "expected"),
    [
        # 40 x 80 image of 200s into 20 x 20: letterbox keeps the aspect (20 x 10 band, black above and below)
        ("letterbox", "band"),
        # center_crop keeps the middle 40 x 40, which is all 200s
        ("center_crop", "full"),
        ("stretch", "full"),
    ],
)
def test_input_geometry(resize: str, expected: str, demo_bundle_dir: Path) -> None:
    from dataclasses import replace

    bundle = replace(read_bundle(demo_bundle_dir), input_size=(20, 20), resize=resize, interpolation="nearest")
    image = np.full((40, 80), 200 / 255.0, np.float32)
    out = preprocess_image(image, bundle, np.float32(1.0), np.zeros(1, np.float32), np.ones(1, np.float32))[..., 0]
    assert out.shape == (20, 20)
    if expected == "full":
        assert (out == 200).all()
    else:
        assert (out[5:15] == 200).all() and (out[:5] == 0).all() and (out[15:] == 0).all()
