"""Model bundles: manifest validation and the SHA-256 check on the weights."""

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


def _edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_demo_bundle_is_valid_and_says_it_is_a_demo(demo_bundle_dir):
    bundle = read_bundle(demo_bundle_dir)
    assert bundle.labels == LABELS
    assert bundle.demo is True
    assert "NOT FOR CLINICAL USE" in bundle.intended_use
    assert set(bundle.thresholds) == set(LABELS)
    assert all(0 < t < 1 for t in bundle.thresholds.values())
    assert bundle.weights_sha256 == sha256_file(bundle.weights_path)
    size_mb = sum(f.stat().st_size for f in demo_bundle_dir.iterdir()) / 1e6
    assert size_mb <= 10, f"demo bundle is {size_mb:.1f} MB, limit 10 MB"


def test_default_bundle_comes_from_env(monkeypatch, bundle_copy):
    monkeypatch.setenv("CXR_MODEL_DIR", str(bundle_copy))
    assert read_bundle().path == bundle_copy
    monkeypatch.delenv("CXR_MODEL_DIR")
    assert read_bundle().path == DEFAULT_BUNDLE_DIR


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


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"labels": list(reversed(LABELS))}, "labels"),
        ({"labels": list(LABELS[:10])}, "labels"),
        ({"thresholds": {"Tuberculosis": 1.5}}, "thresholds"),
        ({"input_size": [224]}, "input_size"),
    ],
)
def test_malformed_manifests_are_refused(bundle_copy, changes, message):
    _edit_manifest(bundle_copy, **changes)
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_copy)


def test_manifest_missing_a_required_key(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["gradcam_layer"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="gradcam_layer"):
        read_bundle(bundle_copy)


def test_identity_carries_the_clinical_status(demo_bundle_dir):
    """Downstream writers (JSON, PDF, DICOM outputs) read the model's status from ``identity()``."""
    identity = read_bundle(demo_bundle_dir).identity()
    assert identity["clinical_status"] == "demo"
    assert {"name", "version", "weights_sha256", "intended_use"} <= set(identity)
