"""Pixel stage: decoded stored values -> float32 image in [0, 1], display polarity.

Inputs: the stored values of one frame (``decode.decode_first_frame``), the
photometric interpretation they are in, and the dataset for the LUT attributes.
Outputs: arrays plus small JSON-serialisable ``info`` dicts for the provenance.

The steps run in the order of the DICOM grayscale pipeline (PS3.4 N.2.1.1):
``to_grayscale`` (colour only) -> ``apply_modality_lut`` -> ``apply_voi`` ->
``apply_polarity``. Each is a pure function; none mutates the dataset.

VOI policy (the model sees the image "as displayed"; train with the same policy):

1. (0028,3010) VOI LUT Sequence, item 0, when it has a LUT Descriptor and LUT
   Data: applied with pydicom's ``apply_voi`` to the rounded modality values and
   normalised by ``2**bits - 1``, where ``bits`` is the LUT Descriptor's third
   value. A LUT pydicom cannot apply is skipped (noted) and step 2 is tried.
2. Otherwise the first (0028,1050) Window Center / (0028,1051) Window Width pair,
   with (0028,1056) VOI LUT Function LINEAR (the default when absent or blank),
   LINEAR_EXACT or SIGMOID, using the PS3.3 C.11.2.1.2 / C.11.2.1.3 formulas
   with output range [0, 1]. A width < 1 for LINEAR, or <= 0 for LINEAR_EXACT
   and SIGMOID (the limits the standard sets), a non-numeric value, or an
   unknown function is invalid: it is noted and step 3 is used.
3. Otherwise the minimum and maximum of the modality values map linearly to 0
   and 1; a constant image becomes all zeros (and is then refused, below).

Blank images are refused, never shown to the model (which answers "Normal" for an
empty picture): a value that is not finite after the modality LUT (a Rescale Slope of
1e308 overflows to infinity; slope 0 is refused too), and a displayed image whose
pixels have (near) zero variance (``check_not_blank``: standard deviation below
``BLANK_STD`` of the [0, 1] range; a constant image, or a window that maps every value
to one grey) are ``UnsupportedImage`` naming the cause.

Colour images (RGB after decoding, or PALETTE COLOR) skip the modality LUT and
VOI: BT.601 luma divided by the full scale of the colour data
(``2**BitsStored - 1``, or ``2**bits - 1`` of the palette LUT entries).

Polarity policy: the image is inverted (``1 - x``) after VOI, exactly once,
when (0028,0004) Photometric Interpretation is MONOCHROME1 *or* (2050,0020)
Presentation LUT Shape is INVERSE; both present still means one inversion.
Presentation LUT Shape is only honoured for monochrome images (it is a
grayscale attribute). After this step low values are dark (air, lungs) and high
values bright (bone).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut
from pydicom.pixels import apply_modality_lut as pydicom_apply_modality_lut
from pydicom.pixels import apply_voi as pydicom_apply_voi
from pydicom.uid import ExplicitVRBigEndian

from inference.decode import resolve_transfer_syntax
from inference.errors import DecodeError, UnsupportedImage

LUMA_WEIGHTS_BT601: tuple[float, float, float] = (0.299, 0.587, 0.114)
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_PALETTE_DESCRIPTORS = tuple(f"{c}PaletteColorLookupTableDescriptor" for c in ("Red", "Green", "Blue", "Alpha"))
_PALETTE_DATA = tuple(f"{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue", "Alpha"))

# Exceptions pydicom's LUT helpers raise on malformed LUT attributes.
_LUT_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    NotImplementedError,
    OverflowError,
)


def to_grayscale(arr: np.ndarray, photometric: str, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """Return ``(values, info)``: monochrome passes through, colour becomes luma.

    ``photometric`` is the interpretation *after decoding* (pydicom reports RGB
    for YCbCr input). For colour, ``values`` is float64 BT.601 luma and
    ``info["full_scale"]`` is the value that means white.
    """
    if photometric in MONOCHROME:
        return arr, {"method": "none"}
    if photometric == "RGB":
        bits = int(ds.get("BitsStored") or 8)
        return luma_bt601(arr), {"method": "bt601_luma", "full_scale": 2**bits - 1}
    if photometric == "PALETTE COLOR":
        rgb, bits = _apply_palette(arr, ds)
        return luma_bt601(rgb[..., :3]), {
            "method": "palette_bt601_luma",
            "full_scale": 2**bits - 1,
        }
    raise UnsupportedImage(f"(0028,0004) Photometric Interpretation {photometric!r} is not supported")


def luma_bt601(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (..., 3) array, as float64."""
    weights = np.asarray(LUMA_WEIGHTS_BT601, dtype=np.float64)
    return np.asarray(rgb[..., :3], dtype=np.float64) @ weights


def scale_to_unit(values: np.ndarray, full_scale: float) -> np.ndarray:
    """``values / full_scale`` clipped to [0, 1], float32."""
    out = np.asarray(values, dtype=np.float64) / float(full_scale)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _apply_palette(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, int]:
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    try:
        rgb = apply_color_lut(arr, palette_in_native_order(ds))
        bits = int(descriptor[2])
    except _LUT_ERRORS as exc:
        raise UnsupportedImage(
            "(0028,1101) Red Palette Color Lookup Table Descriptor "
            f"{_show(descriptor)}: palette cannot be applied ({exc})"
        ) from exc
    if bits not in (8, 16):
        bits = 16 if int(rgb.max(initial=0)) > 255 else 8
    return rgb, bits


def palette_in_native_order(ds: Dataset) -> Dataset:
    """``ds``, or for big-endian files a copy of its palette with the OW LUT data
    byte-swapped: pydicom 3.0.2's ``apply_color_lut`` reads (0028,1201-1204)
    as native-order words, scrambling Explicit VR Big Endian palettes.
    (Segmented palettes are left to pydicom, which handles their byte order.)"""
    if not _is_big_endian(ds) or "RedPaletteColorLookupTableData" not in ds:
        return ds
    palette = Dataset()
    for keyword in ("PixelPresentation", *_PALETTE_DESCRIPTORS, *_PALETTE_DATA):
        if keyword not in ds:
            continue
        elem = ds[keyword]
        if keyword in _PALETTE_DATA and elem.VR == "OW" and len(elem.value) % 2 == 0:
            setattr(
                palette,
                keyword,
                np.frombuffer(elem.value, ">u2").astype(np.uint16).tobytes(),
            )
        else:
            palette[keyword] = elem
    return palette


def _is_big_endian(ds: Dataset) -> bool:
    try:
        return resolve_transfer_syntax(ds) == ExplicitVRBigEndian
    except DecodeError:
        return False


def apply_modality_lut(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """Return ``(float64 values, info)`` after the Modality LUT / rescale step.

    (0028,3000) Modality LUT Sequence wins when present; otherwise Rescale Slope
    (0028,1053) and Intercept (0028,1052) (negative slopes included; a missing
    one defaults to 1 / 0); otherwise values pass through unchanged.
    """
    if ds.get("ModalityLUTSequence"):
        try:
            out = pydicom_apply_modality_lut(arr, ds)
        except _LUT_ERRORS as exc:
            raise UnsupportedImage(f"(0028,3000) Modality LUT Sequence cannot be applied ({exc})") from exc
        return np.asarray(out, dtype=np.float64), {"method": "lut"}

    if ds.get("RescaleSlope") is None and ds.get("RescaleIntercept") is None:
        return np.asarray(arr, dtype=np.float64), {"method": "none"}

    slope = read_number(ds, "RescaleSlope", "(0028,1053)", default=1.0)
    intercept = read_number(ds, "RescaleIntercept", "(0028,1052)", default=0.0)
    if slope == 0.0:
        raise UnsupportedImage("(0028,1053) Rescale Slope is 0; the image would be blank")
    # pydicom's formula (stored x slope + intercept, in float64), computed in place: one
    # float64 copy of the frame instead of two (800 MB each for a 10000 x 10000 frame).
    out = np.asarray(arr).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as a refusal
        out *= slope
        out += intercept
    infinite = out.size - int(np.count_nonzero(np.isfinite(out)))
    if infinite:
        raise UnsupportedImage(
            f"(0028,1053) Rescale Slope {slope:g} and (0028,1052) Rescale Intercept {intercept:g} give "
            f"{infinite} of {out.size} values that are not finite (overflow); the image would be blank"
        )
    return out, {
        "method": "rescale",
        "slope": slope,
        "intercept": intercept,
    }


def read_number(ds: Dataset, keyword: str, tag: str, default: float) -> float:
    """First value of a numeric element as float; ``default`` if absent or blank."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(_first(value))
    except (TypeError, ValueError):
        raise UnsupportedImage(f"{tag} {keyword} has non-numeric value {_show(value)}")
    if not math.isfinite(number):
        raise UnsupportedImage(f"{tag} {keyword} has non-finite value {_show(value)}")
    return number


def apply_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """Return ``(float32 image in [0, 1], info)`` per the VOI policy above.

    ``info["method"]`` is ``"voi_lut_sequence"``, ``"window"`` or ``"min_max"``;
    ``info["skipped"]`` (present only when non-empty) lists why earlier steps of
    the policy were not used.
    """
    skipped: list[str] = []

    if ds.get("VOILUTSequence"):
        result = apply_voi_lut_sequence(values, ds)
        if isinstance(result, str):
            skipped.append(result)
        else:
            return _with_skipped(result[0], result[1], skipped)

    if ds.get("WindowCenter") is not None or ds.get("WindowWidth") is not None:
        window = read_window(ds)
        if isinstance(window, str):
            skipped.append(window)
        else:
            center, width, function = window
            img = window_to_unit(values, center, width, function)
            info = {
                "method": "window",
                "center": center,
                "width": width,
                "function": function,
            }
            return _with_skipped(img, info, skipped)

    img, info = stretch_min_max(values)
    return _with_skipped(img, info, skipped)


def _with_skipped(img: np.ndarray, info: dict[str, Any], skipped: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    if skipped:
        info = {**info, "skipped": skipped}
    return img, info


def apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]] | str:
    """Apply VOI LUT Sequence item 0; return ``(img, info)`` or why it was skipped."""
    item = ds.VOILUTSequence[0]
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or item.get("LUTData") is None:
        return "(0028,3010) VOI LUT Sequence item 0 lacks LUT Descriptor or LUT Data"
    try:
        entries = int(descriptor[0]) or 2**16
        first_mapped = int(descriptor[1])
        bits = int(descriptor[2])
        # Round and clip to the LUT's input domain first: pydicom indexes through
        # an unsigned array, where out-of-range values would wrap around.
        lo, hi = first_mapped, first_mapped + entries - 1
        indices = np.clip(np.rint(values), lo, hi).astype(np.int64)
        mapped = pydicom_apply_voi(indices, ds, index=0)
    except _LUT_ERRORS as exc:
        return f"(0028,3010) VOI LUT Sequence item 0 cannot be applied ({exc})"
    full_scale = 2**bits - 1
    img = np.clip(np.asarray(mapped, dtype=np.float64) / full_scale, 0.0, 1.0)
    info: dict[str, Any] = {
        "method": "voi_lut_sequence",
        "entries": entries,
        "first_mapped": first_mapped,
        "bits": bits,
    }
    explanation = item.get("LUTExplanation")
    if explanation:
        info["explanation"] = str(explanation)
    return img.astype(np.float32), info


def read_window(ds: Dataset) -> tuple[float, float, str] | str:
    """First Window Center/Width pair and VOI LUT Function, or why it is invalid."""
    raw_center, raw_width = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        center = float(_first(raw_center))
        width = float(_first(raw_width))
    except (TypeError, ValueError, IndexError):
        return (
            f"(0028,1050)/(0028,1051) Window Center/Width {_show(raw_center)}/{_show(raw_width)} is not a numeric pair"
        )
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper() or "LINEAR"
    if function not in VOI_FUNCTIONS:
        return f"(0028,1056) VOI LUT Function {function!r} is not supported"
    if not (math.isfinite(center) and math.isfinite(width)):
        return f"(0028,1050)/(0028,1051) window {center}/{width} is not finite"
    if function == "LINEAR" and width < 1:
        return f"(0028,1051) Window Width {width} < 1 is invalid for LINEAR"
    if function != "LINEAR" and width <= 0:
        return f"(0028,1051) Window Width {width} <= 0 is invalid for {function}"
    return center, width, function


def window_to_unit(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1
    (SIGMOID) windowing with output range [0, 1], as float32.

    Computed in place in one float64 array besides ``values`` (a 10000 x 10000 frame
    would otherwise hold four or five 800 MB temporaries at once); the values are the
    formulas' own, the pieces below and above the window exactly 0 and 1."""
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        # 1 / (1 + exp(-4 (x - c) / w)) written with tanh: same value, no overflow.
        out = x - center
        out *= 2.0
        out /= width
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5
        return out.astype(np.float32)
    if function == "LINEAR_EXACT":
        lower, upper, c, w = center - width / 2, center + width / 2, center, width
    else:  # LINEAR
        c, w = center - 0.5, width - 1.0
        lower, upper = c - w / 2, c + w / 2
    out = x - c
    if w > 0:  # LINEAR with width 1 has no "between" values: a pure threshold
        out /= w
        out += 0.5
    np.clip(out, 0.0, 1.0, out=out)
    out[x <= lower] = 0.0
    out[x > upper] = 1.0
    return out.astype(np.float32)


def stretch_min_max(values: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Map [min, max] of ``values`` to [0, 1]; a constant image becomes zeros."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32), {
            "method": "min_max",
            "min": lo,
            "max": hi,
        }
    with np.errstate(over="ignore", invalid="ignore"):  # a range too wide for float64: check_not_blank refuses it
        out = x - lo
        out /= hi - lo
    return out.astype(np.float32), {"method": "min_max", "min": lo, "max": hi}


#: A displayed image (values in [0, 1]) whose pixels' standard deviation is below this is
#: blank: about one grey step of a 10-bit display (1/1023). A chest radiograph's is ~0.2;
#: one white pixel in 4096 black ones is still 0.016.
BLANK_STD = 1e-3
_STD_CHUNK = 1 << 20


def displayed_std(img: np.ndarray) -> float:
    """Standard deviation of ``img``'s values in float64, 1 Mi values at a time (no
    full-size float64 copy of a large image); NaN if any value is not finite."""
    flat = np.ravel(img)
    if flat.size == 0:
        return 0.0
    mean = float(np.add.reduce(flat, dtype=np.float64)) / flat.size
    if not math.isfinite(mean):
        return math.nan
    squares = 0.0
    for start in range(0, flat.size, _STD_CHUNK):
        deviation = flat[start : start + _STD_CHUNK].astype(np.float64) - mean
        squares += float(np.dot(deviation, deviation))
    return math.sqrt(squares / flat.size)


def check_not_blank(img: np.ndarray, values: np.ndarray, voi: dict[str, Any]) -> None:
    """Refuse a displayed image with (near) zero variance (``BLANK_STD``) or a value that
    is not finite. ``values`` (the modality values, or the luma of a colour image) and
    ``voi`` (``apply_voi``'s info) name what made it blank."""
    std = displayed_std(img)
    if not math.isfinite(std):
        raise UnsupportedImage("the displayed image holds values that are not finite; it would be blank")
    if std >= BLANK_STD:
        return
    method = voi.get("method")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo == hi:
        cause = f"every pixel value is {lo:g} (a constant image)"
    elif method == "min_max":
        cause = f"the values span {voi['min']:g}..{voi['max']:g}, too wide a range to display"
    elif method == "window":
        cause = (
            f"(0028,1050) Window Center {voi['center']:g} / (0028,1051) Window Width {voi['width']:g} "
            f"({voi['function']}) maps every value to (nearly) one grey"
        )
    elif method == "voi_lut_sequence":
        cause = "(0028,3010) VOI LUT Sequence maps every value to (nearly) one grey"
    else:
        cause = "the colour image is (nearly) one colour"
    raise UnsupportedImage(
        f"the displayed image is blank (standard deviation {std:.2g} of its [0, 1] pixels, below {BLANK_STD:g}): "
        f"{cause}"
    )


def decide_inversion(photometric: str, ds: Dataset) -> str | None:
    """Why the image must be inverted for display, or None. ``photometric`` is the
    file's (0028,0004) value; MONOCHROME1 or INVERSE means one inversion."""
    monochrome1 = photometric == "MONOCHROME1"
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    inverse = shape == "INVERSE" and photometric in MONOCHROME
    if monochrome1 and inverse:
        return "MONOCHROME1 and PresentationLUTShape INVERSE (inverted once)"
    if monochrome1:
        return "MONOCHROME1"
    if inverse:
        return "PresentationLUTShape INVERSE"
    return None


def apply_polarity(img01: np.ndarray, photometric: str, ds: Dataset) -> tuple[np.ndarray, bool]:
    """Return ``(image, inverted)``: ``1 - img01`` when ``decide_inversion`` says so."""
    if decide_inversion(photometric, ds) is None:
        return img01, False
    return (1.0 - img01).astype(np.float32), True


def pixel_sha256(arr: np.ndarray) -> str:
    """SHA-256 hex digest of the stored values: C-contiguous, little-endian bytes.

    Independent of the transfer syntax, so lossless encodings of one image agree.
    """
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return hashlib.sha256(little.tobytes()).hexdigest()


def _first(value: Any) -> Any:
    """First item of a multi-valued element value, or the value itself."""
    if isinstance(value, (MultiValue, list, tuple)):
        return value[0]
    return value


def _show(value: Any) -> str:
    """Short repr of an element value for error details."""
    text = repr(list(value) if isinstance(value, (MultiValue, tuple)) else value)
    return text if len(text) <= 60 else text[:57] + "..."
