"""What the header says: patient identity, eligibility, and the read's provenance.

The middle part of the read stage (``inference.dicom_read``), from a loaded
``Dataset`` (``inference.dicom_load``) and nothing decoded:

* ``read_patient_info``: identity and demographics (``MissingPatientId`` when blank);
* ``check_eligibility``: refuse from the header alone what must not be decoded
  (``UnsupportedModality``, ``UnsupportedImage``, truncated native Pixel Data);
* ``record_provenance``: the JSON-serialisable record of every decision of one read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from inference.decode import DecodeInfo, resolve_transfer_syntax
from inference.dicom_load import DEFAULT_MAX_PIXELS, declared_length, inflate_limit, is_deferred, read_text
from inference.errors import (
    DecodeError,
    MissingPatientId,
    UnreadableDicom,
    UnsupportedImage,
    UnsupportedModality,
)
from inference.image import PatientInfo
from inference.pixels import pixel_sha256

ENV_ACCEPTED_MODALITIES = "CXR_ACCEPTED_MODALITIES"
ENV_MAX_PIXELS = "CXR_MAX_PIXELS"
MODALITY_ABSENT_TOKEN = "NONE"
"""In ``CXR_ACCEPTED_MODALITIES``, stands for "(0008,0060) absent or blank"."""

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
#: Bits Allocated values of integer (7FE0,0010) Pixel Data that pydicom decodes.
SUPPORTED_BITS_ALLOCATED = frozenset({1, 8, 16, 32})


@dataclass(frozen=True)
class ReadOptions:
    """What the read stage accepts. ``""`` in ``accepted_modalities`` accepts files
    without (0008,0060) Modality (scanned films). Limits apply per frame.

    ``max_pixels`` (``CXR_MAX_PIXELS``) bounds rows x columns x samples of the frame
    decoded, as the DICOM header declares it and, for compressed data, as the
    codestream's own header declares it (``inference.codestream``: the two must agree);
    it also sets how far a deflated dataset may inflate (``max_inflated_bytes``).
    """

    accepted_modalities: frozenset[str] = frozenset({"CR", "DX", "SC", "OT", ""})
    max_side: int = 16384
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        normalised = frozenset(m.strip().upper() for m in self.accepted_modalities)
        object.__setattr__(self, "accepted_modalities", normalised)
        if self.max_side < 1 or self.max_pixels < 1:
            raise ValueError("max_side and max_pixels must be positive")

    @property
    def max_inflated_bytes(self) -> int:
        """How far a deflated dataset may inflate (``dicom_load.inflate_limit``)."""
        return inflate_limit(self.max_pixels)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReadOptions:
        """Build options from the environment (``os.environ`` by default).

        ``CXR_ACCEPTED_MODALITIES`` is a comma-separated list, case-insensitive,
        e.g. ``CR,DX,NONE``; the token ``NONE`` accepts files whose Modality is
        absent or blank. ``CXR_MAX_PIXELS`` is a positive whole number (``_`` allowed,
        e.g. ``50_000_000``). Unset or blank keeps the defaults; a bad value raises
        ``ValueError`` naming the variable.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        raw = env.get(ENV_ACCEPTED_MODALITIES, "").strip()
        if raw:
            kwargs["accepted_modalities"] = parse_modalities(raw)
        raw = env.get(ENV_MAX_PIXELS, "").strip()
        if raw:
            kwargs["max_pixels"] = parse_positive_int(ENV_MAX_PIXELS, raw)
        return cls(**kwargs)


def parse_positive_int(name: str, text: str) -> int:
    """``"50_000_000"`` -> 50000000; anything but a whole number above 0 raises ``ValueError``."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number above 0, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a whole number above 0, got {text!r}")
    return value


def parse_modalities(text: str) -> frozenset[str]:
    """``"CR, dx,NONE"`` -> ``{"CR", "DX", ""}``; empty entries are ignored."""
    tokens = {token.strip().upper() for token in text.split(",")} - {""}
    if not tokens:
        raise ValueError(f"{ENV_ACCEPTED_MODALITIES} lists no modality: {text!r}")
    return frozenset("" if t == MODALITY_ABSENT_TOKEN else t for t in tokens)


# ------------------------------------------------------------------- patient info


def read_patient_info(ds: Dataset, patient_id_override: str | None) -> PatientInfo:
    """Identity and demographics as strings ("" when absent).

    The override wins when given and not blank; otherwise a blank or absent
    (0010,0020) Patient ID raises ``MissingPatientId``.
    """
    override = (patient_id_override or "").strip()
    patient_id = override or read_text(ds, "PatientID")
    if not patient_id:
        raise MissingPatientId("(0010,0020) Patient ID is absent or blank and no patient id override was given")
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
        accepted = ", ".join(sorted(m or MODALITY_ABSENT_TOKEN for m in options.accepted_modalities))
        raise UnsupportedModality(
            f"(0008,0060) Modality {modality or '(absent)'!r} is not accepted (accepted: {accepted})"
        )

    for keyword, tag in (
        ("FloatPixelData", "(7FE0,0008)"),
        ("DoubleFloatPixelData", "(7FE0,0009)"),
    ):
        if keyword in ds:
            raise UnsupportedImage(f"{tag} {keyword} is not supported, only (7FE0,0010)")
    if "PixelData" not in ds or (not is_deferred(ds, 0x7FE00010) and ds.PixelData is None):
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
        raise UnsupportedImage(f"(0028,0004) Photometric Interpretation {photometric or '(absent)'!r} is not supported")
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


def check_native_length(ds: Dataset, rows: int, columns: int, samples: int, photometric: str) -> None:
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
            f"truncated: (7FE0,0010) Pixel Data holds {held} bytes, one frame of {rows}x{columns} needs {needed}"
        )


def record_provenance(ds: Dataset, stored: np.ndarray, info: DecodeInfo, record: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable record of one read: syntax and decoder, pixel layout,
    every pixel-pipeline decision, spacing, the stored-value hash and notes."""
    notes = list(record["notes"])
    if info.number_of_frames > 1:
        notes.insert(0, f"multi-frame: used frame {info.frame} of {info.number_of_frames}")
    file_photometric = read_text(ds, "PhotometricInterpretation").upper()
    if info.photometric_interpretation != file_photometric:
        notes.append(f"decoder delivered {info.photometric_interpretation} for (0028,0004) {file_photometric}")
    if read_text(ds, "PresentationIntentType").upper() == "FOR PROCESSING":
        notes.append("(0008,0068) Presentation Intent Type is FOR PROCESSING (raw detector data)")
    if "PresentationLUTSequence" in ds:
        notes.append("(2050,0010) Presentation LUT Sequence ignored")
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        notes.append("functional group rescale/window not applied (top-level values only)")
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
        notes.append(f"{tag} {keyword} '{read_text(ds, keyword)}' is invalid and was ignored")
    return None, None, "; ".join(notes) or None
