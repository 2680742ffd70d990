"""Unit tests for inference.pixels: each step of the grayscale pipeline on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing
from pydicom.sequence import Sequence

from inference import pixels as pixels_module
from inference.errors import UnsupportedImage
from inference.pixels import (
    apply_modality_lut,
    apply_polarity,
    apply_voi,
    check_not_blank,
    decide_inversion,
    displayed_std,
    pixel_sha256,
    stretch_min_max,
    to_grayscale,
    window_to_unit,
)


def header(**attrs: object) -> Dataset:
    """A dataset holding only the attributes a pixel step reads."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    return item


# ---------------------------------------------------------------- modality LUT


def test_negative_rescale_slope_is_applied() -> None:
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    ds = header(RescaleSlope=-10, RescaleIntercept=3000)

    values, info = apply_modality_lut(stored, ds)

    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [[3000, 2000], [1000, 0]])
    assert info == {"method": "rescale", "slope": -10.0, "intercept": 3000.0}


def test_rescale_absent_passes_values_through() -> None:
    stored = np.array([[-5, 7]], dtype=np.int16)

    values, info = apply_modality_lut(stored, header())

    np.testing.assert_array_equal(values, [[-5.0, 7.0]])
    assert values.dtype == np.float64
    assert info == {"method": "none"}


def test_rescale_with_only_slope_defaults_intercept_to_zero() -> None:
    values, info = apply_modality_lut(np.array([2, 4]), header(RescaleSlope=0.5))

    np.testing.assert_array_equal(values, [1.0, 2.0])
    assert info == {"method": "rescale", "slope": 0.5, "intercept": 0.0}


def test_zero_rescale_slope_is_refused_naming_the_tag() -> None:
    with pytest.raises(UnsupportedImage, match=r"\(0028,1053\)"):
        apply_modality_lut(np.array([1, 2]), header(RescaleSlope=0, RescaleIntercept=0))


def test_modality_lut_sequence_maps_and_clamps() -> None:
    ds = header(ModalityLUTSequence=Sequence([lut_item([4, 10, 16], [100, 200, 300, 400])]))

    values, info = apply_modality_lut(np.array([5, 10, 11, 13, 50], dtype=np.uint16), ds)

    np.testing.assert_array_equal(values, [100, 100, 200, 400, 400])
    assert info == {"method": "lut"}


# -------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("function", "center", "width", "x", "expected"),
    [
        # LINEAR (C.11.2.1.2.1): c - 0.5 and w - 1, so c=50, w=11 spans (44.5, 54.5]
        (
            "LINEAR",
            50,
            11,
            [44.5, 44.6, 47.0, 49.5, 52.0, 54.5, 54.6],
            [0, 0.01, 0.25, 0.5, 0.75, 1, 1],
        ),
        # LINEAR with width 1 is a threshold at c - 0.5
        ("LINEAR", 50, 1, [49.0, 49.5, 49.6, 60.0], [0, 0, 1, 1]),
        # LINEAR_EXACT (C.11.2.1.3.2): (x - c) / w + 0.5 on (c - w/2, c + w/2]
        (
            "LINEAR_EXACT",
            50,
            10,
            [45.0, 47.5, 50.0, 52.5, 55.0, 56.0],
            [0, 0.25, 0.5, 0.75, 1, 1],
        ),
        ("LINEAR_EXACT", 50, 0.5, [49.75, 50.0, 50.25], [0, 0.5, 1]),
        # SIGMOID (C.11.2.1.3.1): 1 / (1 + exp(-4 (x - c) / w))
        (
            "SIGMOID",
            50,
            10,
            [50.0, 52.5, 47.5],
            [0.5, 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))],
        ),
    ],
)
def test_window_functions_at_known_points(
    function: str, center: float, width: float, x: list[float], expected: list[float]
) -> None:
    values = np.array(x)

    img, info = apply_voi(values, header(WindowCenter=center, WindowWidth=width, VOILUTFunction=function))

    assert img.dtype == np.float32
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert info == {
        "method": "window",
        "center": center,
        "width": width,
        "function": function,
    }


def test_window_function_defaults_to_linear_and_uses_first_pair() -> None:
    ds = header(WindowCenter=[50, 1000], WindowWidth=[11, 2000])

    img, info = apply_voi(np.array([49.5]), ds)

    assert img.tolist() == [0.5]
    assert info["function"] == "LINEAR"
    assert (info["center"], info["width"]) == (50.0, 11.0)


@pytest.mark.parametrize(
    ("function", "width", "reason"),
    [
        ("LINEAR", 0.5, "< 1 is invalid for LINEAR"),
        ("LINEAR_EXACT", 0, "<= 0 is invalid for LINEAR_EXACT"),
        ("SIGMOID", -3, "<= 0 is invalid for SIGMOID"),
        ("GAMMA", 10, "VOI LUT Function 'GAMMA' is not supported"),
    ],
)
def test_invalid_window_falls_through_to_min_max(function: str, width: float, reason: str) -> None:
    ds = header(WindowCenter=50, WindowWidth=width, VOILUTFunction=function)

    img, info = apply_voi(np.array([10.0, 20.0, 30.0]), ds)

    np.testing.assert_allclose(img, [0.0, 0.5, 1.0])
    assert info["method"] == "min_max"
    assert len(info["skipped"]) == 1 and reason in info["skipped"][0]


@settings(max_examples=60, deadline=None)
@given(
    function=st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID"]),
    center=st.floats(-2000, 2000),
    width=st.floats(1, 5000),
    xs=st.lists(st.integers(-4096, 4095), min_size=1, max_size=30),
)
def test_window_matches_pydicom_rescaled_to_unit(function: str, center: float, width: float, xs: list[int]) -> None:
    # pydicom's apply_windowing maps onto [y_min, y_max] of the stored range;
    # ours maps onto [0, 1]. The two must agree after rescaling.
    ds = header(
        WindowCenter=round(center, 2),
        WindowWidth=round(width, 2),
        VOILUTFunction=function,
        BitsStored=13,
        PixelRepresentation=1,
    )
    values = np.array(xs, dtype=np.float64)
    with np.errstate(over="ignore"):  # pydicom's SIGMOID uses exp(); ours uses tanh
        reference = (apply_windowing(values.copy(), ds) + 4096) / 8191

    ours = window_to_unit(values, float(ds.WindowCenter), float(ds.WindowWidth), function)

    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert ((ours >= 0) & (ours <= 1)).all()
    order = np.argsort(values, kind="stable")
    assert (np.diff(ours[order]) >= 0).all()  # windowing never reorders intensities


# -------------------------------------------------------------------- VOI LUT


def test_voi_lut_sequence_is_preferred_and_normalised_by_descriptor_bits() -> None:
    ds = header(
        VOILUTSequence=Sequence([lut_item([4, 10, 8], [0, 85, 170, 255])]),
        WindowCenter=0,
        WindowWidth=1,
    )

    img, info = apply_voi(np.array([5.0, 10.0, 11.2, 12.0, 13.0, 100.0]), ds)

    np.testing.assert_allclose(img, np.array([0, 0, 85, 170, 255, 255]) / 255)
    assert img.dtype == np.float32
    assert info == {
        "method": "voi_lut_sequence",
        "entries": 4,
        "first_mapped": 10,
        "bits": 8,
    }


def test_voi_lut_with_negative_first_mapped_value() -> None:
    ds = header(VOILUTSequence=Sequence([lut_item([3, -1, 16], [0, 32768, 65535])]))

    img, _ = apply_voi(np.array([-1000.0, -1.0, 0.0, 1.0, 70000.0]), ds)

    np.testing.assert_allclose(img, [0, 0, 32768 / 65535, 1, 1])


def test_unusable_voi_lut_falls_through_to_window() -> None:
    # 9 bits per entry is not allowed (PS3.3 C.11.2.1.1), pydicom refuses it
    ds = header(
        VOILUTSequence=Sequence([lut_item([2, 0, 9], [0, 511])]),
        WindowCenter=50,
        WindowWidth=11,
    )

    img, info = apply_voi(np.array([49.5]), ds)

    assert img.tolist() == [0.5]
    assert info["method"] == "window"
    assert "(0028,3010)" in info["skipped"][0]


# -------------------------------------------------------------------- min/max


def test_min_max_stretch() -> None:
    img, info = stretch_min_max(np.array([[-100.0, 0.0], [100.0, 300.0]]))

    np.testing.assert_allclose(img, [[0, 0.25], [0.5, 1]])
    assert info == {"method": "min_max", "min": -100.0, "max": 300.0}


def test_constant_image_becomes_zeros_without_dividing_by_zero() -> None:
    with np.errstate(all="raise"):
        img, info = apply_voi(np.full((4, 4), 1234.0), header())

    assert img.dtype == np.float32
    assert not img.any()
    assert info == {"method": "min_max", "min": 1234.0, "max": 1234.0}


# -------------------------------------------------------------------- polarity


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted", "reason"),
    [
        ("MONOCHROME1", None, True, "MONOCHROME1"),
        ("MONOCHROME2", "INVERSE", True, "PresentationLUTShape INVERSE"),
        (
            "MONOCHROME1",
            "INVERSE",
            True,
            "MONOCHROME1 and PresentationLUTShape INVERSE",
        ),
        ("MONOCHROME1", "IDENTITY", True, "MONOCHROME1"),
        ("MONOCHROME2", "IDENTITY", False, None),
        ("MONOCHROME2", None, False, None),
        ("RGB", "INVERSE", False, None),  # Presentation LUT Shape is grayscale-only
    ],
)
def test_polarity_inverts_once(photometric: str, shape: str | None, inverted: bool, reason: str | None) -> None:
    ds = header(PhotometricInterpretation=photometric)
    if shape:
        ds.PresentationLUTShape = shape
    img01 = np.array([0.0, 0.25, 1.0], dtype=np.float32)

    out, did_invert = apply_polarity(img01, photometric, ds)

    assert did_invert is inverted
    expected = 1 - img01 if inverted else img01
    np.testing.assert_allclose(out, expected)  # never 1 - (1 - x): one inversion
    got_reason = decide_inversion(photometric, ds)
    assert (got_reason is None) if reason is None else (reason in str(got_reason))


def test_monochrome1_is_inverted_after_the_window() -> None:
    # The window is applied to stored values first; inverting before it would
    # need a mirrored window (the Cornerstone/rse-panimg double-inversion bug).
    ds = header(PhotometricInterpretation="MONOCHROME1", WindowCenter=100, WindowWidth=101)
    values, _ = apply_modality_lut(np.array([0, 49.5, 100, 149, 200]), ds)

    windowed, _ = apply_voi(values, ds)
    img, inverted = apply_polarity(windowed, "MONOCHROME1", ds)

    assert inverted
    # window: [0, 0, 0.505, 0.995, 1]; then one inversion
    np.testing.assert_allclose(img, [1.0, 1.0, 0.495, 0.005, 0.0], atol=1e-6)


# ------------------------------------------------------------------ grayscale


def test_rgb_is_converted_with_bt601_luma() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 200, 200]]], dtype=np.uint8)

    luma, info = to_grayscale(rgb, "RGB", header(BitsStored=8))

    np.testing.assert_allclose(luma, [[0.299 * 255, 0.587 * 255, 0.114 * 255, 200]])
    assert info == {"method": "bt601_luma", "full_scale": 255}


def test_monochrome_passes_through_unchanged() -> None:
    stored = np.array([[1, 2]], dtype=np.uint16)

    out, info = to_grayscale(stored, "MONOCHROME2", header())

    assert out is stored
    assert info == {"method": "none"}


def test_palette_colour_goes_through_the_lut_then_luma() -> None:
    ds = header(PhotometricInterpretation="PALETTE COLOR", BitsStored=8)
    # 3 entries, first mapped value 0, 16 bits per entry (OW, little endian)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [3, 0, 16])
    ds.RedPaletteColorLookupTableData = np.array([0, 65535, 0], "<u2").tobytes()
    ds.GreenPaletteColorLookupTableData = np.array([0, 0, 65535], "<u2").tobytes()
    ds.BluePaletteColorLookupTableData = np.array([0, 0, 0], "<u2").tobytes()

    luma, info = to_grayscale(np.array([[0, 1, 2, 5]], dtype=np.uint8), "PALETTE COLOR", ds)

    np.testing.assert_allclose(luma, [[0, 0.299 * 65535, 0.587 * 65535, 0.587 * 65535]])
    assert info == {"method": "palette_bt601_luma", "full_scale": 65535}


def test_unknown_photometric_is_refused_naming_the_tag() -> None:
    with pytest.raises(UnsupportedImage, match=r"\(0028,0004\).*'HSV'"):
        to_grayscale(np.zeros((2, 2, 3), np.uint8), "HSV", header())


# ---------------------------------------------------------------------- hash


def test_pixel_sha256_ignores_byte_order_and_layout() -> None:
    values = np.array([[1, -2, 300], [4, 5, -32768]], dtype="<i2")
    big_endian = values.astype(">i2")
    fortran = np.asfortranarray(values)

    assert pixel_sha256(values) == pixel_sha256(big_endian) == pixel_sha256(fortran)
    assert pixel_sha256(values) != pixel_sha256(values + 1)


# ---------------------------------------------------------------- blank images


def test_a_rescale_that_overflows_is_refused_naming_both_tags() -> None:
    stored = np.array([[0, 1], [2, 4095]], dtype=np.uint16)
    with pytest.raises(UnsupportedImage, match=r"Rescale Slope 1e\+308 .* give 2 of 4 values that are not finite"):
        apply_modality_lut(stored, header(RescaleSlope="1e308", RescaleIntercept="0"))
    values, _ = apply_modality_lut(stored, header(RescaleSlope="1e300", RescaleIntercept="0"))
    assert np.isfinite(values).all()  # huge but finite: left to the blank check


def test_displayed_std_is_numpys_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.random.default_rng(4).random((37, 53), dtype=np.float32)
    monkeypatch.setattr(pixels_module, "_STD_CHUNK", 100)  # 20 chunks, the last one short
    assert displayed_std(img) == pytest.approx(float(np.std(img.astype(np.float64))), rel=1e-12)
    img[3, 4] = np.nan
    assert np.isnan(displayed_std(img))


def test_near_zero_variance_is_blank_and_one_bright_pixel_is_not() -> None:
    voi = {"method": "window", "center": 40.0, "width": 400.0, "function": "LINEAR"}
    flat = np.full((64, 64), 0.5, dtype=np.float32)
    with pytest.raises(UnsupportedImage, match=r"blank \(standard deviation 0 .*every pixel value is 7"):
        check_not_blank(flat, np.full((64, 64), 7.0), voi)
    faint = flat + np.random.default_rng(1).normal(0, 2e-4, flat.shape).astype(np.float32)
    with pytest.raises(UnsupportedImage, match=r"Window Center 40 / \(0028,1051\) Window Width 400 \(LINEAR\)"):
        check_not_blank(faint, np.arange(4096.0).reshape(64, 64), voi)
    one_pixel = np.zeros((64, 64), dtype=np.float32)
    one_pixel[10, 10] = 1.0
    check_not_blank(one_pixel, one_pixel, voi)  # std 0.016: a (poor) picture, not a blank one
    with pytest.raises(UnsupportedImage, match="not finite"):
        check_not_blank(np.full((4, 4), np.inf, dtype=np.float32), one_pixel, voi)


def test_a_huge_range_stretched_to_nothing_is_blank() -> None:
    values = np.array([[-1e308, 0.0], [0.0, 1e308]])
    img, info = stretch_min_max(values)  # hi - lo overflows: every pixel 0 or NaN
    with pytest.raises(UnsupportedImage, match=r"(too wide a range to display|not finite)"):
        check_not_blank(img, values, info)
