"""Prediction and Grad-CAM with the demo bundle."""

import numpy as np
import pytest

from demo.phantoms import make_phantom
from inference.labels import LABELS
from inference.predict import normalise_heatmap


def _one_hot(name):
    labels = np.zeros(len(LABELS), np.float32)
    labels[LABELS.index(name)] = 1.0
    return labels


def test_normalise_heatmap_is_nan_safe():
    assert np.array_equal(normalise_heatmap(np.full((4, 4), np.nan)), np.zeros((4, 4), np.float32))
    assert np.array_equal(normalise_heatmap(np.full((4, 4), -3.0)), np.zeros((4, 4), np.float32))
    cam = normalise_heatmap(np.array([[np.inf, 1.0], [2.0, -1.0]]))
    assert cam.max() == 1.0 and cam.min() == 0.0 and np.isfinite(cam).all()


def test_prediction_is_deterministic_and_batch_independent(predictor):
    images = [make_phantom(77, i, size=448).image for i in range(3)]
    x = np.stack([predictor.preprocess(im) for im in images])
    batch = predictor.analyse_batch(x)
    again = predictor.analyse_batch(x)
    for a, b in zip(batch, again):
        assert np.array_equal(a.probabilities, b.probabilities)
        assert np.array_equal(a.heatmap, b.heatmap)
    single = predictor.analyse_batch(predictor.preprocess(images[1])[None])[0]
    np.testing.assert_allclose(single.probabilities, batch[1].probabilities, atol=1e-5)
    np.testing.assert_allclose(single.heatmap, batch[1].heatmap, atol=1e-4)


def test_outputs_have_the_contract_shapes(predictor):
    analysis = predictor.analyse_batch(predictor.preprocess(make_phantom(1, 2, size=300).image)[None])[0]
    assert analysis.probabilities.shape == (len(LABELS),)
    assert ((analysis.probabilities >= 0) & (analysis.probabilities <= 1)).all()
    assert analysis.heatmap.ndim == 2 and analysis.heatmap.min() >= 0 and analysis.heatmap.max() <= 1


def test_heatmap_finding_rule(predictor):
    """Highest-scoring present finding, else the highest finding overall."""
    thresholds = np.array([predictor.bundle.thresholds[n] for n in LABELS])
    for i in range(6):
        analysis = predictor.analyse_batch(predictor.preprocess(make_phantom(123, i, size=448).image)[None])[0]
        p = analysis.probabilities
        present = p >= thresholds
        expected = int(np.argmax(np.where(present, p, -1))) if present.any() else int(np.argmax(p))
        assert analysis.heatmap_index == expected


@pytest.mark.parametrize("name", ["Nodule/Mass", "Tuberculosis", "Pleural Effusion", "Cardiomegaly"])
def test_model_finds_a_clear_lesion_and_gradcam_points_at_it(predictor, name):
    """Phantoms with a known lesion: the finding scores present and Grad-CAM's maximum
    falls inside its box for most of them (the model is small; allow one miss)."""
    from demo.evaluate import points_inside

    hits, present = 0, 0
    for i in range(5):
        p = make_phantom(555, i, size=448, labels=_one_hot(name))
        x = predictor.preprocess(p.image)[None]
        k = LABELS.index(name)
        prob = predictor.predict_batch(x)[0, k]
        present += prob >= predictor.bundle.thresholds[name]
        cam = predictor.gradcam_for(x, np.array([k]))[0]
        hits += points_inside(cam, p.boxes[name], 448)
    assert present >= 4, f"{name} scored present in {present}/5"
    assert hits >= 4, f"Grad-CAM pointed into the {name} box in {hits}/5"


def test_normal_phantoms_score_low(predictor):
    thresholds = np.array([predictor.bundle.thresholds[n] for n in LABELS])
    positives = 0
    for i in range(5):
        p = make_phantom(556, i, size=448, labels=np.zeros(len(LABELS), np.float32))
        positives += int(
            (predictor.analyse_batch(predictor.preprocess(p.image)[None])[0].probabilities >= thresholds).sum()
        )
    assert positives <= 2


def test_graphs_are_traced_once_whatever_the_batch_size(predictor):
    """Fixed input signatures: a new batch size or a new image never retraces the graph."""
    x = predictor.preprocess(make_phantom(78, 0, size=256).image)
    predictor.analyse_batch(x[None])
    traced = predictor._analyse.experimental_get_tracing_count()
    for n in (1, 2, 5):
        predictor.analyse_batch(np.repeat(x[None], n, axis=0))
    assert predictor._analyse.experimental_get_tracing_count() == traced == 1
