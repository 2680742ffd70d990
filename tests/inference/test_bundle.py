"""Model bundles: manifest validation (schemas 1 and 2), operating points, the SHA-256 check."""

import json
import shutil

import pytest

from inference.bundle import DEFAULT_BUNDLE_DIR, read_bundle, sha256_file
from inference.errors import BundleError
from inference.labels import LABELS


@pytest.fixture()
def bundle_copy(tmp_path, demo_bundle_dir):
    dst = tmp_path / "bundle"
    shutil.copytree(demo_bundle_dir, dst)
    return dst


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _edit(path, edit):
    manifest = _manifest(path)
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _schema_1(path):
    """The demo bundle's manifest as it was written before schema 2."""
    m = _manifest(path)
    old = {
        "name": m["name"],
        "version": m["version"],
        "demo": True,
        "intended_use": m["intended_use"],
        "labels": m["output"]["labels"],
        "thresholds": m["thresholds"],
        "input_size": m["input"]["size"],
        "channels": 1,
        "normalization": {"mean": 0.0, "std": 1.0},
        "gradcam_layer": m["gradcam"]["layer"],
        "logits_layer": m["gradcam"]["logits_layer"],
        "weights_file": m["weights"]["file"],
        "weights_sha256": m["weights"]["sha256"],
    }
    (path / "manifest.json").write_text(json.dumps(old))
    return path


def test_demo_bundle_is_schema_2_and_says_it_is_a_demo(demo_bundle_dir):
    bundle = read_bundle(demo_bundle_dir)
    assert bundle.schema == 2 and bundle.labels == LABELS
    assert bundle.demo is True and bundle.clinical_status == "demo"
    assert "NOT FOR CLINICAL USE" in bundle.intended_use
    assert set(bundle.thresholds) == set(LABELS)
    assert all(0 < t < 1 for t in bundle.thresholds.values())
    assert bundle.weights_sha256 == sha256_file(bundle.weights_path)
    assert bundle.weights_sha256 == "b873459fea077af1f6ec550fca1a911a99bb4dc01e3a4d937fba94489c498799"  # unchanged
    assert bundle.assessed_conditions() == list(LABELS)
    assert all(m.relation == "exact" and m.condition == label for label, m in bundle.label_map.items())
    size_mb = sum(f.stat().st_size for f in demo_bundle_dir.iterdir()) / 1e6
    assert size_mb <= 10, f"demo bundle is {size_mb:.1f} MB, limit 10 MB"


def test_identity_carries_status_operating_point_and_schema(demo_bundle_dir):
    """Downstream writers (JSON, PDF, DICOM outputs) read the model's status from ``identity()``."""
    identity = read_bundle(demo_bundle_dir).identity()
    assert identity["clinical_status"] == "demo"
    assert identity["operating_point"] == "default" and identity["manifest_schema"] == 2
    assert {"name", "version", "weights_sha256", "intended_use"} <= set(identity)


def test_schema_1_is_still_read_as_the_same_bundle(bundle_copy, demo_bundle_dir):
    new = read_bundle(demo_bundle_dir)
    old = read_bundle(_schema_1(bundle_copy))
    assert old.schema == 1 and old.clinical_status == "demo"
    for attr in ("labels", "thresholds", "input_size", "channels", "gradcam_layer", "logits_layer", "weights_sha256"):
        assert getattr(old, attr) == getattr(new, attr), attr
    assert old.normalization["scale"] == pytest.approx(new.normalization["scale"])
    assert old.normalization["mean"] == new.normalization["mean"]
    assert old.label_map == new.label_map


def test_default_bundle_comes_from_env(monkeypatch, bundle_copy):
    monkeypatch.setenv("CXR_MODEL_DIR", str(bundle_copy))
    assert read_bundle().path == bundle_copy
    monkeypatch.delenv("CXR_MODEL_DIR")
    assert read_bundle().path == DEFAULT_BUNDLE_DIR


def test_operating_points_switch_thresholds_and_are_named(monkeypatch, bundle_copy):
    def add_points(m):
        m["operating_points"] = {
            "high_sensitivity": {"thresholds": {"Tuberculosis": 0.2}, "method": "sens 0.95 on validation"},
            "site-A": {"thresholds": {"Tuberculosis": 0.37, "Pneumothorax": 0.6}},
        }

    _edit(bundle_copy, add_points)
    default = read_bundle(bundle_copy)
    assert default.operating_point == "default" and default.thresholds["Tuberculosis"] == 0.49
    assert default.operating_points == ("default", "high_sensitivity", "site-A")
    monkeypatch.setenv("CXR_OPERATING_POINT", "site-A")
    site = read_bundle(bundle_copy)
    assert site.operating_point == "site-A" and site.identity()["operating_point"] == "site-A"
    assert site.thresholds["Tuberculosis"] == 0.37 and site.thresholds["Pneumothorax"] == 0.6
    assert site.thresholds["Cardiomegaly"] == default.thresholds["Cardiomegaly"]  # not overridden: the default
    assert read_bundle(bundle_copy, operating_point="high_sensitivity").thresholds["Tuberculosis"] == 0.2
    monkeypatch.setenv("CXR_OPERATING_POINT", "nowhere")
    with pytest.raises(BundleError, match=r"operating point 'nowhere' \(CXR_OPERATING_POINT\) is not in the manifest"):
        read_bundle(bundle_copy)


def test_damaged_weights_are_refused(bundle_copy):
    weights = bundle_copy / "model.keras"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        read_bundle(bundle_copy)


def test_missing_weights_and_manifest_are_refused(bundle_copy, tmp_path):
    (bundle_copy / "model.keras").unlink()
    with pytest.raises(BundleError, match="not found"):
        read_bundle(bundle_copy)
    with pytest.raises(BundleError, match="manifest.json not found"):
        read_bundle(tmp_path / "nowhere")


def _set(path, value):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set(["input", "normalization"], "keras_tff"), "unknown normalization preset 'keras_tff'"),
        (_set(["input", "normalization"], {"scale": 1, "mean": [1, 2]}), "mean must give 1 or 1 finite values"),
        (_set(["input", "channels"], 4), "input.channels must be 1 or 3"),
        (_set(["input", "resize"], "fit"), "input.resize 'fit' is not one of stretch, letterbox, center_crop"),
        (_set(["input", "interpolation"], "lanczos"), "input.interpolation 'lanczos' is not one of"),
        (_set(["format"], "onnx"), "format 'onnx' is not supported"),
        (_set(["output", "activation"], "relu"), "output.activation 'relu' is not one of"),
        (_set(["label_map", "Tuberculosis"], "TB"), "label_map.Tuberculosis is mapped to 'TB', not one of the 11"),
        (
            _set(["label_map", "Lung Opacity"], "Consolidation"),
            "label_map names 'Lung Opacity', not among output.labels",
        ),
        (_set(["label_map", "Fibrosis"], "TODO"), "label_map still says TODO for Fibrosis"),
        (_set(["label_map"], KeyError), "label_map is missing"),
        (_set(["label_map", "Fibrosis"], {"condition": "Fibrosis", "relation": "similar"}), "relation 'similar'"),
        (_set(["label_map", "Fibrosis"], "Infiltration"), "Fibrosis, Infiltration all feed 'Infiltration'"),
        (_set(["thresholds", "Tuberculosis"], 1.5), "threshold outside (0, 1) for Tuberculosis"),
        (_set(["thresholds", "TB"], 0.5), "thresholds names 'TB', not among the model's labels"),
        (_set(["output", "normal_label"], "No Finding"), "output.normal_label 'No Finding' is not one of"),
        (_set(["output", "normal_label"], "Fibrosis"), "label_map.Fibrosis is the normal_label"),
        (_set(["output", "labels"], ["Tuberculosis", "Tuberculosis"]), "output.labels repeats Tuberculosis"),
        (_set(["input", "size"], [224]), "input.size must be [height, width]"),
        (_set(["clinical_status"], "TODO"), "clinical_status must say"),
        (_set(["weights", "file"], "model.onnx"), "format 'keras' needs a .keras or .h5 file"),
        (_set(["schema"], 3), "unknown manifest schema 3"),
        (_set(["gradcam", "layer"], ""), "gradcam.layer must be a layer path"),
    ],
)
def test_manifest_errors_are_one_clear_line(bundle_copy, edit, message):
    _edit(bundle_copy, edit)
    with pytest.raises(BundleError) as info:
        read_bundle(bundle_copy)
    text = str(info.value)
    assert message in text, text
    assert text.startswith(f"model bundle {bundle_copy}: ") and "\n" not in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": list(reversed(LABELS))}, "labels"),
        ({"labels": list(LABELS[:10])}, "labels"),
        ({"thresholds": {"Tuberculosis": 1.5}}, "thresholds"),
        ({"input_size": [224]}, "input_size"),
    ],
)
def test_malformed_schema_1_manifests_are_refused(bundle_copy, changes, message):
    _schema_1(bundle_copy)
    _edit(bundle_copy, lambda m: m.update(changes))
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_copy)


def test_schema_1_manifest_missing_a_required_key(bundle_copy):
    _schema_1(bundle_copy)
    _edit(bundle_copy, lambda m: m.pop("gradcam_layer"))
    with pytest.raises(BundleError, match="gradcam_layer"):
        read_bundle(bundle_copy)
