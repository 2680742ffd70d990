"""Raster outputs: the 8-bit display image, the Grad-CAM overlay, and their PNG bytes.

Stage: image rendering. Decode once, render twice: the caller turns the decoded pixels
into the uint8 display image ONCE (``to_uint8_display``), then encodes it
(``encode_png``) for ``*_source_image.png`` and draws the overlay on the same array
(``render_heatmap_overlay``, then ``encode_png``) for ``*_heatmap.png``. The PDF embeds those two PNG byte
strings as they are; nothing here is computed twice.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_MAX_SIDE = 2048
# PNG encoder settings, chosen by measurement on a 2048 x 2048 phantom (CPU time of
# cv2.imencode; ``python -m bench.png_options`` reruns it):
# * grayscale radiograph: the "up" row filter with zlib's run-length strategy, 55 ms and
#   2.43 MB, against 196 ms and 2.61 MB for libpng's adaptive filters at zlib level 3;
# * colour overlay: the "sub" filter at zlib level 1, 150 ms and 4.37 MB, against
#   370 ms and 3.71 MB at level 3 with adaptive filters (18% larger, 2.4 x faster).
PNG_GRAY_PARAMS = (
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_UP,
)
PNG_COLOUR_PARAMS = (
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
)
OVERLAY_ALPHA = 0.5  # colour weight where the heatmap is 1; it falls to 0 with the heat


def to_uint8_display(pixels01: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """Convert model-space pixels to the 8-bit grayscale display image.

    Input: 2-D array of floats in [0, 1] (display polarity, as ``DicomImage.pixels``);
    NaN counts as 0 and values outside [0, 1] are clipped. Output: uint8 array of the
    same aspect ratio whose long side is at most ``max_side`` (downscaled with
    ``cv2.INTER_AREA``; never upscaled).
    """
    if pixels01.ndim != 2 or pixels01.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {pixels01.shape}")
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    clean = np.nan_to_num(pixels01.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    display = (np.clip(clean, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    size = _fit_size(display.shape[1], display.shape[0], max_side)
    if size == (display.shape[1], display.shape[0]):
        return display
    return np.asarray(cv2.resize(display, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def encode_png(arr: np.ndarray) -> bytes:
    """Encode a uint8 grayscale (H, W) or BGR (H, W, 3) array as PNG bytes."""
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    params = PNG_GRAY_PARAMS if arr.ndim == 2 else PNG_COLOUR_PARAMS
    ok, buffer = cv2.imencode(".png", arr, list(params))
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {arr.shape}")
    return buffer.tobytes()


def render_heatmap_overlay(
    display_u8: np.ndarray,
    heatmap01: np.ndarray,
    label: str,
    *,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """Blend a colour-mapped heatmap over the display image and caption it.

    Inputs: ``display_u8`` (H, W) uint8 grayscale from ``to_uint8_display``;
    ``heatmap01`` 2-D floats in [0, 1] at any resolution (the Grad-CAM grid; NaN counts
    as 0, out-of-range values are clipped); ``label``, the caption (e.g. from
    ``heatmap_caption``; non-ASCII characters become ``?`` since OpenCV's Hershey fonts
    are ASCII-only). Output: (H, W, 3) uint8 BGR.

    The heatmap is resized bilinearly to (W, H) and coloured with ``COLORMAP_JET``. Its
    blending weight is ``alpha * heat`` per pixel, so cold regions show the radiograph
    unchanged instead of under a uniform blue cast, and hot regions are clearly coloured.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if display_u8.ndim != 2 or display_u8.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 display image, got {display_u8.dtype} {display_u8.shape}")
    if heatmap01.ndim != 2 or heatmap01.size == 0:
        raise ValueError(f"expected a non-empty 2-D heatmap, got shape {heatmap01.shape}")
    height, width = display_u8.shape
    grid = np.nan_to_num(heatmap01.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    resized = cv2.resize(np.clip(grid, 0.0, 1.0), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    colour = cv2.applyColorMap((heat * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(display_u8, cv2.COLOR_GRAY2BGR)
    weight = np.float32(alpha) * heat
    # blendLinear: per-pixel (w1*a + w2*b) / (w1 + w2), one C++ pass instead of numpy temporaries
    overlay = np.asarray(cv2.blendLinear(colour, base, weight, 1.0 - weight), dtype=np.uint8)
    _draw_caption(overlay, label)
    return overlay


def heatmap_caption(finding: str, confidence: float) -> str:
    """The overlay caption, e.g. ``"Tuberculosis 87.3%"``."""
    return f"{finding} {confidence * 100.0:.1f}%"


@dataclass(frozen=True)
class PngStream:
    """The pixel stream of a PNG as it is stored: zlib data of filtered scanlines."""

    width: int
    height: int
    channels: int  # 1 (grayscale) or 3 (RGB)
    data: bytes  # the IDAT chunks joined: a zlib stream, PNG-filtered rows (predictor 15)


def png_stream(png: bytes) -> PngStream | None:
    """The IDAT stream of an 8-bit, non-interlaced grayscale or RGB PNG, else ``None``.

    Such a stream is exactly what a PDF image with ``/FlateDecode`` and
    ``/DecodeParms << /Predictor 15 >>`` holds, so the report embeds the PNG's
    compressed bytes as they are instead of decoding and deflating the pixels again.
    Anything else (palette, alpha, 16-bit, interlaced, a damaged chunk) returns
    ``None`` and the caller takes the general path.
    """
    if len(png) < 33 or png[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos, header, parts = 8, None, []
    while pos + 12 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        body = png[pos + 8 : pos + 8 + length]
        if len(body) != length or zlib.crc32(kind + body) != int.from_bytes(
            png[pos + 8 + length : pos + 12 + length], "big"
        ):
            return None
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            parts.append(body)
        elif kind in (b"PLTE", b"tRNS", b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT"):
            return None  # colour management or transparency the plain stream would lose
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or len(header) != 13 or not parts:
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", header)
    channels = {0: 1, 2: 3}.get(colour)
    if channels is None or depth != 8 or compression or filtering or interlace or not width or not height:
        return None
    return PngStream(width, height, channels, b"".join(parts))


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding the pixels."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the long side is at most ``max_side``, aspect kept."""
    long_side = max(width, height)
    if long_side <= max_side:
        return width, height
    scale = max_side / long_side
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draw_caption(image: np.ndarray, text: str) -> None:
    """Draw ``text`` white on a dark box in the top-left corner, scaled to the image."""
    text = text.encode("ascii", "replace").decode("ascii")
    if not text:
        return
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, min(width, height) / 700.0)
    thickness = max(1, round(scale * 1.6))
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    margin = max(2, round(8 * scale))
    if text_w + 3 * margin > width:  # long caption on a narrow image: shrink to fit
        scale *= (width - 3 * margin) / max(text_w, 1)
        thickness = max(1, round(scale * 1.6))
        (text_w, text_h), baseline = cv2.getTextSize(text, font, max(scale, 0.1), thickness)
    box_right = min(width - 1, margin + text_w + 2 * margin)
    box_bottom = min(height - 1, margin + text_h + baseline + 2 * margin)
    cv2.rectangle(image, (margin, margin), (box_right, box_bottom), (0, 0, 0), thickness=-1)
    origin = (2 * margin, margin + margin + text_h)
    cv2.putText(
        image,
        text,
        origin,
        font,
        max(scale, 0.1),
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )
