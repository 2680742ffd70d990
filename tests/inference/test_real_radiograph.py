"""A real CR chest radiograph (pydicom-data RG1_*, MONOCHROME1) through the model.

Nobody here wrote these files. The uncompressed and JPEG 2000 lossless forms hold
the same pixels, so every prediction and heatmap must be identical.
"""

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from engine.pipeline import analyse_file
from inference.dicom_read import read_dicom_image


@pytest.fixture(scope="module")
def rg1_paths():
    return get_testdata_file("RG1_UNCR.dcm"), get_testdata_file("RG1_J2KR.dcm")


def test_lossless_forms_give_identical_predictions(rg1_paths, predictor):
    results = [analyse_file(p, predictor, job_id="rg1") for p in rg1_paths]
    a, b = (r.document for r in results)
    assert a["findings"] == b["findings"]
    assert a["result"] == b["result"]
    assert a["heatmap"]["finding"] == b["heatmap"]["finding"]
    assert a["provenance"]["pixel_sha256"] == b["provenance"]["pixel_sha256"]
    assert (
        a["provenance"]["decoder"] != b["provenance"]["decoder"]
        or a["provenance"]["transfer_syntax_uid"] != b["provenance"]["transfer_syntax_uid"]
    )
    heat = [r.files[r.kinds["heatmap"]] for r in results]
    assert heat[0] == heat[1]


def test_displayed_image_shows_dark_lungs(rg1_paths):
    image = read_dicom_image(rg1_paths[0])
    assert image.provenance["photometric_interpretation"] == "MONOCHROME1"
    assert image.provenance["inverted"] is True
    px = image.pixels
    h, w = px.shape
    lungs = np.r_[
        px[int(0.3 * h) : int(0.6 * h), int(0.2 * w) : int(0.4 * w)].ravel(),
        px[int(0.3 * h) : int(0.6 * h), int(0.6 * w) : int(0.8 * w)].ravel(),
    ].mean()
    spine = px[int(0.3 * h) : int(0.6 * h), int(0.46 * w) : int(0.54 * w)].mean()
    assert lungs < spine
