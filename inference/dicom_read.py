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
  Data, float pixel data, absurd (0028,0010)/(0028,0011) dimensions (over
  ``ReadOptions.max_pixels``, ``CXR_MAX_PIXELS``), an unsupported pixel layout, a
  decompression bomb (a codestream larger than the header says, a deflated dataset
  inflating past the limit), a blank image (values not finite after the modality LUT,
  or displayed pixels of (near) zero variance).
* ``MissingPatientId``: blank (0010,0020) and no override.
* ``UnsupportedModality``: (0008,0060) not in ``ReadOptions.accepted_modalities``.
* ``DecodeError``: pixel data present but no plugin decodes it.

Stages run in this order, cheapest first, so a header promising gigabytes is
refused before anything is decoded: ``dicom_load.load_dataset`` (parse, truncation)
-> ``dicom_header.read_patient_info`` -> ``dicom_header.check_eligibility`` ->
``decode.decode_first_frame`` -> ``build_display_image`` (the ``inference.pixels``
steps) -> ``dicom_header.record_provenance``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from inference.decode import DecodeInfo, decode_first_frame, summarise_exception
from inference.dicom_header import (
    ReadOptions,
    check_eligibility,
    read_patient_info,
    read_text,
    record_provenance,
)
from inference.dicom_load import load_dataset
from inference.errors import UnsupportedImage
from inference.image import DicomImage
from inference.pixels import (
    apply_modality_lut,
    apply_polarity,
    apply_voi,
    check_not_blank,
    decide_inversion,
    scale_to_unit,
    to_grayscale,
)

__all__ = ["ReadOptions", "build_display_image", "read_dicom_image"]


# ---------------------------------------------------------------------- pixels


def build_display_image(stored: np.ndarray, info: DecodeInfo, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
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

    check_not_blank(img, values, voi)  # a blank picture must not be answered "Normal"
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
    options: ReadOptions | None = None,
    patient_id_override: str | None = None,
) -> DicomImage:
    """Turn one file into a ``DicomImage`` or raise a reasoned ``CxrError``
    (``options``: the defaults of ``ReadOptions`` when not given)."""
    options = options or ReadOptions()
    ds = load_dataset(path, options.max_inflated_bytes)
    patient = read_patient_info(ds, patient_id_override)
    check_eligibility(ds, options)
    try:
        stored, info = decode_first_frame(ds)
        pixels, record = build_display_image(stored, info, ds)
    except MemoryError as exc:
        # A worker process runs under a memory bound (workers.memory): an image within
        # CXR_MAX_PIXELS that still does not fit is this file's skip, not the process's end.
        raise UnsupportedImage(
            f"(0028,0010) Rows {ds.get('Rows')} x (0028,0011) Columns {ds.get('Columns')}: decoding and "
            f"displaying the image needed more memory than this process may use ({summarise_exception(exc)}); "
            "see CXR_WORKER_MEMORY_MB and CXR_MAX_PIXELS"
        ) from None
    provenance = record_provenance(ds, stored, info, record)
    return DicomImage(path=str(path), pixels=pixels, patient=patient, provenance=provenance)
