"""reports.images: display conversion, PNG encoding, heatmap overlay."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reports.images import (
    encode_png,
    heatmap_caption,
    png_size,
    render_heatmap_overlay,
    to_uint8_display,
)


def decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((2500, 2000), (2048, 1638)),
        ((2000, 2500), (1638, 2048)),
        ((600, 500), (600, 500)),
    ],
)
def test_display_caps_long_side_and_keeps_aspect(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    pixels = np.linspace(0.0, 1.0, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    display = to_uint8_display(pixels)
    assert display.shape == expected and display.dtype == np.uint8


def test_display_maps_range_and_nan() -> None:
    pixels = np.array([[0.0, 0.5, 1.0], [np.nan, -3.0, 7.0]], dtype=np.float32)
    assert to_uint8_display(pixels).tolist() == [[0, 128, 255], [0, 0, 255]]


def test_display_rejects_non_2d() -> None:
    with pytest.raises(ValueError):
        to_uint8_display(np.zeros((4, 4, 3), dtype=np.float32))


def test_source_png_is_8bit_and_lossless() -> None:
    pixels = np.random.default_rng(0).random((600, 500), dtype=np.float32)
    png = encode_png(to_uint8_display(pixels))
    decoded = decode(png)
    assert decoded.dtype == np.uint8 and decoded.shape == (600, 500)
    assert np.array_equal(decoded, to_uint8_display(pixels))
    assert png_size(png) == (500, 600)
    assert png_size(encode_png(decoded)) == (500, 600)


def test_overlay_colours_hot_region_and_leaves_cold_region() -> None:
    display = np.full((400, 400), 128, dtype=np.uint8)
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[6:, 6:] = 1.0  # bottom-right is hot
    overlay = render_heatmap_overlay(display, heat, heatmap_caption("Tuberculosis", 0.87))
    assert overlay.shape == (400, 400, 3) and overlay.dtype == np.uint8
    base = np.full((3,), 128, dtype=np.int16)
    hot = overlay[330, 330].astype(np.int16)
    cold = overlay[330, 60].astype(np.int16)
    assert np.abs(hot - base).max() > 40
    assert np.abs(cold - base).max() <= 1
    assert np.abs(overlay[100:200, 150:250].astype(np.int16) - 128).max() <= 1  # cold, no caption


def test_overlay_draws_caption_box_in_corner() -> None:
    display = np.full((300, 300), 200, dtype=np.uint8)
    overlay = render_heatmap_overlay(display, np.zeros((4, 4), dtype=np.float32), "Tuberculosis 87.0%")
    corner = overlay[:40, :150]
    assert (corner == 0).any() and (corner == 255).any()  # dark box, white text


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_overlay_survives_non_finite_heatmaps(fill: float) -> None:
    display = np.full((64, 80), 90, dtype=np.uint8)
    heat = np.full((7, 7), fill, dtype=np.float32)
    overlay = render_heatmap_overlay(display, heat, "")
    assert overlay.shape == (64, 80, 3)


def test_heatmap_png_decodes_as_bgr() -> None:
    display = np.full((120, 90), 100, dtype=np.uint8)
    heat = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    decoded = decode(encode_png(render_heatmap_overlay(display, heat, "Tuberculosis 50.0%")))
    assert decoded.shape == (120, 90, 3) and decoded.dtype == np.uint8


def test_non_ascii_caption_does_not_crash() -> None:
    display = np.full((50, 50), 100, dtype=np.uint8)
    render_heatmap_overlay(display, np.ones((2, 2), dtype=np.float32), "Übergröße 李 " * 5)
