"""Read stage: one file from a hospital folder -> a model input, or a reasoned refusal.

Input: a path (any extension, any content), ``ReadOptions`` and an optional
patient id override.
Output: ``DicomImage`` whose ``pixels`` are float32, shape (rows, columns), in
[0, 1], display polarity (see ``inference.pixels`` for the VOI / polarity
policy), with a JSON-serialisable ``provenance`` dict recording every decision.
Refusals are the domain exceptions of ``inference.errors``:

* ``UnreadableDicom``: not a regular file, empty, not DICOM, or truncated (including an *Image
  Storage* object whose (7FE0,0010) Pixel Data is missing).
* ``UnsupportedImage``: DICOMDIR, a non-image object without (7FE0,0010) Pixel
  Data, float pixel data, absurd (0028,0010)/(0028,0011) dimensions, an
  unsupported pixel layout.
* ``MissingPatientId``: blank (0010,0020) and no override.
* ``UnsupportedModality``: (0008,0060) not in ``ReadOptions.accepted_modalities``.
* ``DecodeError``: pixel data present but no plugin decodes it.

Stages run in this order, cheapest first, so a header promising gigabytes is
refused before anything is decoded: ``load_dataset`` -> ``read_patient_info``
-> ``check_eligibility`` -> ``decode.decode_first_frame`` ->
``build_display_image``.

The header pass does not read large values: ``load_dataset`` parses with
``defer_size`` (``DEFER_BYTES``), so a defined-length value above 1 MiB, the native
(7FE0,0010) Pixel Data above all, stays on disk until the decoder asks for it. A
file whose header promises gigabytes (or which carries a huge private blob) is
refused having read only its small elements; checks use the *declared* length of
a deferred value, and a declared length that runs past the end of the file is
refused as truncated. Encapsulated (compressed) Pixel Data has an undefined length
and pydicom must scan it to find its end, so it is read during the header pass
(bounded by the file's size). ``stop_before_pixels`` would not do: it drops the
pixels the decoder needs, so every file would be parsed twice.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from inference.decode import (
    DecodeInfo,
    decode_first_frame,
    resolve_transfer_syntax,
    summarise_exception,
)
from inference.errors import (
    DecodeError,
    MissingPatientId,
    UnreadableDicom,
    UnsupportedImage,
    UnsupportedModality,
    reraise_if_interrupt,
)
from inference.image import DicomImage, PatientInfo
from inference.pixels import (
    apply_modality_lut,
    apply_polarity,
    apply_voi,
    decide_inversion,
    pixel_sha256,
    scale_to_unit,
    to_grayscale,
)

ENV_ACCEPTED_MODALITIES = "CXR_ACCEPTED_MODALITIES"
MODALITY_ABSENT_TOKEN = "NONE"
"""In ``CXR_ACCEPTED_MODALITIES``, stands for "(0008,0060) absent or blank"."""

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SUPPORTED_PHOTOMETRIC = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_RCT",
        "YBR_ICT",
        "PALETTE COLOR",
    }
)
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Defined-length values larger than this are left on disk by the header pass.
DEFER_BYTES = 1 << 20
#: Bits Allocated values of integer (7FE0,0010) Pixel Data that pydicom decodes.
SUPPORTED_BITS_ALLOCATED = frozenset({1, 8, 16, 32})


@dataclass(frozen=True)
class ReadOptions:
    """What the read stage accepts. ``""`` in ``accepted_modalities`` accepts files
    without (0008,0060) Modality (scanned films). Limits apply per frame."""

    accepted_modalities: frozenset[str] = frozenset({"CR", "DX", "SC", "OT", ""})
    max_side: int = 16384
    max_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        normalised = frozenset(m.strip().upper() for m in self.accepted_modalities)
        object.__setattr__(self, "accepted_modalities", normalised)
        if self.max_side < 1 or self.max_pixels < 1:
            raise ValueError("max_side and max_pixels must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReadOptions:
        """Build options from the environment (``os.environ`` by default).

        ``CXR_ACCEPTED_MODALITIES`` is a comma-separated list, case-insensitive,
        e.g. ``CR,DX,NONE``; the token ``NONE`` accepts files whose Modality is
        absent or blank. Unset or blank keeps the defaults.
        """
        env = os.environ if environ is None else environ
        raw = env.get(ENV_ACCEPTED_MODALITIES, "").strip()
        if not raw:
            return cls()
        return cls(accepted_modalities=parse_modalities(raw))


def parse_modalities(text: str) -> frozenset[str]:
    """``"CR, dx,NONE"`` -> ``{"CR", "DX", ""}``; empty entries are ignored."""
    tokens = {token.strip().upper() for token in text.split(",")} - {""}
    if not tokens:
        raise ValueError(f"{ENV_ACCEPTED_MODALITIES} lists no modality: {text!r}")
    return frozenset("" if t == MODALITY_ABSENT_TOKEN else t for t in tokens)


# --------------------------------------------------------------------------- load


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Parse ``path`` as DICOM, refusing what cannot be an image object.

    Files without the 128-byte preamble / ``DICM`` are re-read with
    ``force=True`` and kept only if they hold (0008,0016) SOP Class UID,
    (0010,0020) Patient ID or (7FE0,0010) Pixel Data. Raises ``UnreadableDicom``
    (empty, not DICOM, truncated) or ``UnsupportedImage`` (DICOMDIR).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UnreadableDicom(f"cannot open file: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        # A FIFO would block the reader until the task's time limit.
        raise UnreadableDicom("not a regular file (a FIFO, socket, device or folder)")
    size = info.st_size
    if size == 0:
        raise UnreadableDicom("zero-length file")

    forced = False
    try:
        ds = _parse(path, force=False)
    except InvalidDicomError:
        forced = True
        ds = _parse(path, force=True)

    if is_dicomdir(ds):
        raise UnsupportedImage(
            f"DICOMDIR (SOP Class {DICOMDIR_SOP_CLASS}) is a media index, not an image"
        )
    if forced and not looks_like_dicom(ds):
        raise UnreadableDicom(
            "not DICOM: no preamble/'DICM' prefix and no (0008,0016) SOP Class UID, "
            "(0010,0020) Patient ID or (7FE0,0010) Pixel Data"
        )
    find_truncation(ds, size)
    if not looks_like_dicom(ds):
        raise UnreadableDicom(
            "no (0008,0016) SOP Class UID, (0010,0020) Patient ID or (7FE0,0010) "
            "Pixel Data could be read: file truncated or corrupt"
        )
    find_missing_pixel_data(ds)
    _convert_elements(ds)
    return ds


def _parse(path: str | os.PathLike[str], force: bool) -> Dataset:
    try:
        # A str path: pydicom re-opens it by name to read a deferred value.
        return pydicom.dcmread(os.fspath(path), force=force, defer_size=DEFER_BYTES)
    except InvalidDicomError:
        if force:
            raise UnreadableDicom(
                "not DICOM: pydicom cannot parse it even with force=True"
            )
        raise
    except RecursionError as exc:
        # Sequences nested deeper than the interpreter's recursion limit (pydicom
        # parses each level recursively); the stack is unwound by now.
        raise UnreadableDicom(
            "sequences nested too deeply to parse (Python recursion limit reached)"
        ) from exc
    except Exception as exc:  # the parser fails in many ways on arbitrary bytes
        reraise_if_interrupt(exc)
        raise UnreadableDicom(
            f"not parseable as DICOM ({type(exc).__name__}: {summarise_exception(exc)})"
        ) from exc


def is_deferred(ds: Dataset, tag: int) -> bool:
    """True if the value of top-level ``tag`` was left on disk by the header pass."""
    elem = ds.get_item(tag, keep_deferred=True)
    return isinstance(elem, RawDataElement) and elem.value is None and elem.length > 0


def declared_length(ds: Dataset, keyword: str) -> int | None:
    """Length in bytes of a top-level element's value without reading a deferred value:
    the declared length for a raw element, else the converted value's length; ``None``
    when absent or of undefined length."""
    if keyword not in ds:
        return None
    elem = ds.get_item(keyword, keep_deferred=True)
    if isinstance(elem, RawDataElement):
        if elem.length == _UNDEFINED_LENGTH:
            return None
        return elem.length if elem.value is None else len(elem.value)
    value = elem.value
    return len(value) if isinstance(value, (bytes, bytearray)) else None


def is_dicomdir(ds: Dataset) -> bool:
    """True for a DICOMDIR (media index) by SOP Class or Media Storage SOP Class."""
    file_meta = getattr(ds, "file_meta", None)
    media_class = (
        file_meta.get("MediaStorageSOPClassUID") if file_meta is not None else None
    )
    return DICOMDIR_SOP_CLASS in (
        str(media_class or ""),
        str(ds.get("SOPClassUID") or ""),
    )


def looks_like_dicom(ds: Dataset) -> bool:
    """True if ``ds`` holds any of SOP Class UID, Patient ID or Pixel Data."""
    return any(kw in ds for kw in ("SOPClassUID", "PatientID", "PixelData"))


def find_truncation(ds: Dataset, file_size: int) -> None:
    """Raise ``UnreadableDicom`` if pydicom silently read a truncated file.

    pydicom accepts a value cut short by end of file, and stops quietly when the
    file ends inside an element header. Checks the raw (not yet converted)
    top-level elements: a value shorter than its declared length (for a deferred
    value, one whose declared end lies past the end of the file), or, when no
    Pixel Data was read, 1-7 stray bytes after the last element.
    """
    last: tuple[int, RawDataElement] | None = None
    for elem in _top_level_elements(ds):
        if not isinstance(elem, RawDataElement):
            continue
        defined = elem.length != _UNDEFINED_LENGTH
        if defined and elem.value is not None and len(elem.value) < elem.length:
            raise UnreadableDicom(
                f"truncated: {_tag(elem.tag)} declares {elem.length} bytes, the file "
                f"holds {len(elem.value)}"
            )
        if defined and elem.value is None and elem.value_tell + elem.length > file_size:
            raise UnreadableDicom(
                f"truncated: {_tag(elem.tag)} declares {elem.length} bytes, the file "
                f"holds {max(file_size - elem.value_tell, 0)}"
            )
        if last is None or elem.value_tell > last[0]:
            last = (elem.value_tell, elem)

    if "PixelData" in ds or last is None or _is_deflated(ds):
        return
    if any(
        isinstance(e, DataElement) and (e.file_tell or 0) > last[0]
        for e in _top_level_elements(ds)
    ):
        return  # a sequence comes last; its end offset is not known
    elem = last[1]
    if elem.length == _UNDEFINED_LENGTH:
        return
    stray = file_size - (elem.value_tell + elem.length)
    if 0 < stray < 8:
        raise UnreadableDicom(
            f"truncated: file ends {stray} bytes into the element after {_tag(elem.tag)}"
        )


def _top_level_elements(ds: Dataset) -> list[DataElement | RawDataElement]:
    """Like ``Dataset.elements()``, but a deferred value stays on disk."""
    return [ds.get_item(tag, keep_deferred=True) for tag in sorted(ds.keys())]


def find_missing_pixel_data(ds: Dataset) -> None:
    """Raise ``UnreadableDicom`` if an *Image Storage* SOP Class lacks Pixel Data.

    Pixel Data is the last element and mandatory in image objects, so its absence
    there means the file was cut at an element boundary (or written broken).
    Objects of other classes (reports, PDFs, plans) without pixels are left to
    ``check_eligibility``, which refuses them as ``UnsupportedImage``.
    """
    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if any(keyword in ds for keyword in pixel_keywords):
        return
    sop_class = UID(read_text(ds, "SOPClassUID"))
    if "Image Storage" in sop_class.name:
        raise UnreadableDicom(
            f"truncated or corrupt: (0008,0016) SOP Class {sop_class.name!r} requires "
            "(7FE0,0010) Pixel Data, which is absent"
        )


def _is_deflated(ds: Dataset) -> bool:
    try:
        return resolve_transfer_syntax(ds).is_deflated
    except DecodeError:
        return False


def _convert_elements(ds: Dataset) -> None:
    """Convert every top-level raw element now, so bad values fail here, once.

    Deferred values (over ``DEFER_BYTES``) stay on disk: converting one would read it.
    """
    for tag in list(ds.keys()):
        if is_deferred(ds, tag):
            continue
        try:
            ds[tag]
        except Exception as exc:  # value conversion of arbitrary bytes
            reraise_if_interrupt(exc)
            raise UnreadableDicom(
                f"element {_tag(tag)} cannot be parsed ({summarise_exception(exc)})"
            ) from exc


# ------------------------------------------------------------------- patient info


def read_patient_info(ds: Dataset, patient_id_override: str | None) -> PatientInfo:
    """Identity and demographics as strings ("" when absent).

    The override wins when given and not blank; otherwise a blank or absent
    (0010,0020) Patient ID raises ``MissingPatientId``.
    """
    override = (patient_id_override or "").strip()
    patient_id = override or read_text(ds, "PatientID")
    if not patient_id:
        raise MissingPatientId(
            "(0010,0020) Patient ID is absent or blank and no patient id override was given"
        )
    return PatientInfo(
        patient_id=patient_id,
        patient_name=read_text(ds, "PatientName"),
        sop_instance_uid=read_text(ds, "SOPInstanceUID"),
        study_instance_uid=read_text(ds, "StudyInstanceUID"),
        series_instance_uid=read_text(ds, "SeriesInstanceUID"),
        age=read_text(ds, "PatientAge"),
        sex=read_text(ds, "PatientSex"),
        modality=read_text(ds, "Modality"),
        view_position=read_text(ds, "ViewPosition"),
        body_part=read_text(ds, "BodyPartExamined"),
        study_date=read_text(ds, "StudyDate"),
        acquisition_datetime=read_acquisition_datetime(ds),
    )


def read_text(ds: Dataset, keyword: str) -> str:
    """Element value as a stripped string; multiple values joined with ``\\``."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def read_acquisition_datetime(ds: Dataset) -> str:
    """AcquisitionDateTime, else the first non-blank date of Acquisition, Content
    or Study Date with its time appended (DICOM DT form, e.g. ``20240131093000``)."""
    combined = read_text(ds, "AcquisitionDateTime")
    if combined:
        return combined
    for date_kw, time_kw in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
        ("StudyDate", "StudyTime"),
    ):
        date = read_text(ds, date_kw)
        if date:
            return date + read_text(ds, time_kw)
    return ""


# ----------------------------------------------------------------- eligibility


def check_eligibility(ds: Dataset, options: ReadOptions) -> None:
    """Refuse, from the header alone, what the engine must not decode.

    Checks in order: (0008,0060) Modality; (7FE0,0010) Pixel Data present (Float
    and Double Float Pixel Data are refused); (0028,0010) Rows and (0028,0011)
    Columns present, non-zero, <= ``max_side`` and rows*columns*samples <=
    ``max_pixels``; (0028,0002) and (0028,0004) supported; for uncompressed
    transfer syntaxes, at least one frame of Pixel Data. Nothing is decoded.
    """
    modality = read_text(ds, "Modality").upper()
    if modality not in options.accepted_modalities:
        accepted = ", ".join(
            sorted(m or MODALITY_ABSENT_TOKEN for m in options.accepted_modalities)
        )
        raise UnsupportedModality(
            f"(0008,0060) Modality {modality or '(absent)'!r} is not accepted "
            f"(accepted: {accepted})"
        )

    for keyword, tag in (
        ("FloatPixelData", "(7FE0,0008)"),
        ("DoubleFloatPixelData", "(7FE0,0009)"),
    ):
        if keyword in ds:
            raise UnsupportedImage(
                f"{tag} {keyword} is not supported, only (7FE0,0010)"
            )
    if "PixelData" not in ds or (
        not is_deferred(ds, 0x7FE00010) and ds.PixelData is None
    ):
        raise UnsupportedImage("no (7FE0,0010) Pixel Data: not an image object")

    rows = _read_dimension(ds, "Rows", "(0028,0010)", options.max_side)
    columns = _read_dimension(ds, "Columns", "(0028,0011)", options.max_side)
    samples = _read_int(ds, "SamplesPerPixel", "(0028,0002)", default=1)
    if samples not in (1, 3):
        raise UnsupportedImage(f"(0028,0002) Samples per Pixel {samples} is not 1 or 3")
    if rows * columns * samples > options.max_pixels:
        raise UnsupportedImage(
            f"(0028,0010) Rows {rows} x (0028,0011) Columns {columns} x {samples} "
            f"samples exceeds the limit of {options.max_pixels} values per frame"
        )

    bits_allocated = _read_int(ds, "BitsAllocated", "(0028,0100)", default=None)
    if bits_allocated is not None and bits_allocated not in SUPPORTED_BITS_ALLOCATED:
        raise UnsupportedImage(
            f"(0028,0100) Bits Allocated {bits_allocated} is not supported "
            f"(only {', '.join(map(str, sorted(SUPPORTED_BITS_ALLOCATED)))})"
        )

    photometric = read_text(ds, "PhotometricInterpretation").upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise UnsupportedImage(
            f"(0028,0004) Photometric Interpretation {photometric or '(absent)'!r} "
            "is not supported"
        )
    check_native_length(ds, rows, columns, samples, photometric)


def _read_dimension(ds: Dataset, keyword: str, tag: str, max_side: int) -> int:
    value = _read_int(ds, keyword, tag, default=None)
    if value is None:
        raise UnsupportedImage(f"{tag} {keyword} is absent")
    if value <= 0 or value > max_side:
        raise UnsupportedImage(f"{tag} {keyword} {value} is outside 1..{max_side}")
    return value


def _read_int(ds: Dataset, keyword: str, tag: str, default: int | None) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnsupportedImage(f"{tag} {keyword} has invalid value {value!r}")


def check_native_length(
    ds: Dataset, rows: int, columns: int, samples: int, photometric: str
) -> None:
    """For uncompressed data, refuse Pixel Data shorter than one frame."""
    try:
        tsyntax = resolve_transfer_syntax(ds)
    except DecodeError:
        return  # decode_first_frame reports the unknown syntax
    if tsyntax.is_encapsulated:
        return
    bits_allocated = _read_int(ds, "BitsAllocated", "(0028,0100)", default=None)
    if not bits_allocated:
        return  # the decoder names the missing element
    values = rows * columns * (2 if photometric == "YBR_FULL_422" else samples)
    needed = math.ceil(values * bits_allocated / 8)
    held = declared_length(ds, "PixelData")
    if held is None:
        return  # undefined length on a native syntax: the decoder refuses it
    if held < needed:
        raise UnreadableDicom(
            f"truncated: (7FE0,0010) Pixel Data holds {held} bytes, one frame of "
            f"{rows}x{columns} needs {needed}"
        )


# ---------------------------------------------------------------------- pixels


def build_display_image(
    stored: np.ndarray, info: DecodeInfo, ds: Dataset
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the ``inference.pixels`` steps on decoded stored values.

    Returns ``(pixels, record)``: float32 (rows, columns) in [0, 1], display
    polarity, and the pixel part of the provenance (modality_lut, voi,
    inverted, inversion_reason, notes).
    """
    notes: list[str] = []
    file_photometric = read_text(ds, "PhotometricInterpretation").upper()
    values, grey = to_grayscale(stored, info.photometric_interpretation, ds)

    modality_lut: dict[str, Any]
    voi: dict[str, Any]
    if grey["method"] == "none":
        values, modality_lut = apply_modality_lut(values, ds)
        img, voi = apply_voi(values, ds)
        notes.extend(voi.get("skipped", []))
    else:
        img = scale_to_unit(values, grey["full_scale"])
        modality_lut, voi = {"method": "none"}, {"method": "none"}
        source = "palette colour" if grey["method"].startswith("palette") else "colour"
        notes.append(f"{source} image converted to grayscale (BT.601 luma)")

    reason = decide_inversion(file_photometric, ds)
    img, inverted = apply_polarity(img, file_photometric, ds)
    pixels = np.ascontiguousarray(img, dtype=np.float32)
    record = {
        "modality_lut": modality_lut,
        "voi": voi,
        "inverted": inverted,
        "inversion_reason": reason,
        "notes": notes,
    }
    return pixels, record


# --------------------------------------------------------------- orchestrator


def read_dicom_image(
    path: str | os.PathLike[str],
    options: ReadOptions = ReadOptions(),
    patient_id_override: str | None = None,
) -> DicomImage:
    """Turn one file into a ``DicomImage`` or raise a reasoned ``CxrError``."""
    ds = load_dataset(path)
    patient = read_patient_info(ds, patient_id_override)
    check_eligibility(ds, options)
    stored, info = decode_first_frame(ds)
    pixels, record = build_display_image(stored, info, ds)
    provenance = record_provenance(ds, stored, info, record)
    return DicomImage(
        path=str(path), pixels=pixels, patient=patient, provenance=provenance
    )


def record_provenance(
    ds: Dataset, stored: np.ndarray, info: DecodeInfo, record: dict[str, Any]
) -> dict[str, Any]:
    """The JSON-serialisable record of one read: syntax and decoder, pixel layout,
    every pixel-pipeline decision, spacing, the stored-value hash and notes."""
    notes = list(record["notes"])
    if info.number_of_frames > 1:
        notes.insert(
            0, f"multi-frame: used frame {info.frame} of {info.number_of_frames}"
        )
    file_photometric = read_text(ds, "PhotometricInterpretation").upper()
    if info.photometric_interpretation != file_photometric:
        notes.append(
            f"decoder delivered {info.photometric_interpretation} for "
            f"(0028,0004) {file_photometric}"
        )
    if read_text(ds, "PresentationIntentType").upper() == "FOR PROCESSING":
        notes.append(
            "(0008,0068) Presentation Intent Type is FOR PROCESSING (raw detector data)"
        )
    if "PresentationLUTSequence" in ds:
        notes.append("(2050,0010) Presentation LUT Sequence ignored")
    if (
        "SharedFunctionalGroupsSequence" in ds
        or "PerFrameFunctionalGroupsSequence" in ds
    ):
        notes.append(
            "functional group rescale/window not applied (top-level values only)"
        )
    spacing, source, spacing_note = read_pixel_spacing(ds)
    if spacing_note:
        notes.append(spacing_note)

    return {
        "transfer_syntax_uid": info.transfer_syntax_uid,
        "transfer_syntax": info.transfer_syntax,
        "decoder": info.decoder,
        "photometric_interpretation": file_photometric,
        "inverted": record["inverted"],
        "inversion_reason": record["inversion_reason"],
        "modality_lut": record["modality_lut"],
        "voi": record["voi"],
        "frame": info.frame,
        "number_of_frames": info.number_of_frames,
        "original_rows": info.rows,
        "original_columns": info.columns,
        "samples_per_pixel": info.samples_per_pixel,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": source,
        "pixel_sha256": pixel_sha256(stored),
        "notes": notes,
    }


def read_pixel_spacing(
    ds: Dataset,
) -> tuple[list[float] | None, str | None, str | None]:
    """``([row, col] mm, source keyword, note)`` from (0028,0030) PixelSpacing, else
    (0018,1164) ImagerPixelSpacing; invalid values are skipped with a note."""
    notes: list[str] = []
    for keyword, tag in (
        ("PixelSpacing", "(0028,0030)"),
        ("ImagerPixelSpacing", "(0018,1164)"),
    ):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        try:
            pair = [float(v) for v in value]
        except (TypeError, ValueError):
            pair = []
        if len(pair) == 2 and all(math.isfinite(v) and v > 0 for v in pair):
            return pair, keyword, "; ".join(notes) or None
        notes.append(
            f"{tag} {keyword} '{read_text(ds, keyword)}' is invalid and was ignored"
        )
    return None, None, "; ".join(notes) or None


def _tag(tag: int) -> str:
    """``(7FE0,0010) PixelData`` style label for error details."""
    label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    keyword = keyword_for_tag(tag)
    return f"{label} {keyword}" if keyword else label
