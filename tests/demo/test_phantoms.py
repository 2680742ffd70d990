"""The phantom generator and its DICOM writer: deterministic, labelled, readable."""

import json

import numpy as np
import pydicom
import pytest

from demo.phantom_dicom import PhantomFileSpec, phantom_dataset
from demo.phantoms import LOCALIZED, make_phantom
from inference.dicom_read import read_dicom_image
from inference.labels import LABELS


def test_same_seed_and_index_give_the_same_phantom():
    a, b = make_phantom(3, 17, size=128), make_phantom(3, 17, size=128)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.labels, b.labels)
    assert a.boxes == b.boxes
    assert not np.array_equal(a.image, make_phantom(3, 18, size=128).image)


@pytest.mark.parametrize("k", range(len(LABELS)))
def test_each_condition_is_drawn_and_localized_ones_have_a_box(k):
    labels = np.eye(len(LABELS), dtype=np.float32)[k]
    normal = make_phantom(5, 1, size=192, labels=np.zeros(len(LABELS), np.float32))
    sick = make_phantom(5, 1, size=192, labels=labels)
    assert sick.findings == [LABELS[k]]
    assert sick.image.dtype == np.float32 and sick.image.min() >= 0 and sick.image.max() <= 1
    # Same anatomy stream, so the difference is the signature (plus its rng draws).
    assert np.abs(sick.image - normal.image).mean() > 0.002
    if LABELS[k] in LOCALIZED:
        x0, y0, x1, y1 = sick.boxes[LABELS[k]]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_lungs_are_darker_than_mediastinum():
    p = make_phantom(9, 0, size=256, labels=np.zeros(len(LABELS), np.float32))
    img = p.image
    lungs = np.r_[img[90:150, 50:80].ravel(), img[90:150, 176:206].ravel()].mean()
    mediastinum = img[40:110, 120:136].mean()
    assert lungs < mediastinum - 0.1


@pytest.mark.parametrize("index", range(8))
def test_written_dicom_reads_back_to_the_phantom(tmp_path, index):
    phantom = make_phantom(11, index, size=160)
    spec = PhantomFileSpec.for_index(index)
    ds = phantom_dataset(phantom, seed=11, index=index, spec=spec)
    path = tmp_path / "p.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.PhotometricInterpretation == spec.photometric
    assert back.BitsStored == spec.bits_stored
    assert back.Modality == spec.modality
    image = read_dicom_image(path)
    assert image.provenance["inverted"] == (spec.photometric == "MONOCHROME1")
    # Display polarity restored: the read image matches the phantom up to
    # quantisation (and, without a window, a min/max stretch).
    corr = np.corrcoef(image.pixels.ravel(), phantom.image.ravel())[0, 1]
    assert corr > 0.995
    if spec.windowed:
        assert np.abs(image.pixels - phantom.image).max() <= 1.0 / (1 << spec.bits_stored) + 1e-3


def test_cli_phantoms_index_lists_findings(phantom_dir):
    index = json.loads((phantom_dir / "phantoms.json").read_text())
    assert len(index) == 8
    syntaxes = {r["transfer_syntax"] for r in index}
    assert any("JPEG 2000" in s for s in syntaxes) and "Explicit VR Little Endian" in syntaxes
    assert {r["photometric"] for r in index} == {"MONOCHROME1", "MONOCHROME2"}
    for r in index:
        assert (phantom_dir / r["file"]).is_file()
        assert set(r["boxes"]) <= set(r["findings"])
