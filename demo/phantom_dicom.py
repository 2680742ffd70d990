"""``cxr phantoms``: write synthetic radiographs as valid DICOM files.

Each file is a phantom from :mod:`demo.phantoms` stored the way real CR/DX
equipment stores radiographs, cycling through the variants a reader must handle:
CR and DX, MONOCHROME1 and MONOCHROME2, 8 to 16 bits stored, uncompressed or JPEG
2000 (lossless, encoded by pylibjpeg-openjpeg through pydicom), with or without a
window, with patient ids, names (Latin and non-Latin, UTF-8), ages and sexes.
A ``phantoms.json`` beside the files records each file's findings and lesion boxes
(normalised x0, y0, x1, y1) for tests and demos.

These images are synthetic and contain no patient data.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from demo.phantoms import Phantom, make_phantom

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
NAMES = (
    "DOE^JANE",
    "SMITH^JOHN",
    "Иванов^Иван",
    "李^雷",
    "Müller^Jürgen",
    "Παπαδόπουλος^Νίκος",
    "GARCÍA^JOSÉ",
    "佐藤^花子",
    "O'BRIEN^SEAN",
    "NGUYEN^VAN AN",
)
BITS = (8, 10, 12, 14, 16)


@dataclass(frozen=True)
class PhantomFileSpec:
    """How one phantom is stored; derived deterministically from its index."""

    modality: str
    photometric: str
    bits_stored: int
    compressed: bool
    windowed: bool

    @classmethod
    def for_index(cls, index: int, compression: str = "mixed") -> PhantomFileSpec:
        compressed = {"mixed": index % 2 == 1, "none": False, "j2k": True}[compression]
        return cls(
            modality="CR" if (index // 2) % 2 == 0 else "DX",
            photometric="MONOCHROME1" if (index // 4) % 2 == 0 else "MONOCHROME2",
            bits_stored=BITS[index % len(BITS)],
            compressed=compressed,
            windowed=index % 3 != 2,
        )


def phantom_dataset(
    phantom: Phantom, *, seed: int, index: int, spec: PhantomFileSpec, patient_id: str | None = None
) -> Dataset:
    """A complete DICOM dataset (file meta included) holding ``phantom``."""
    bits = spec.bits_stored
    top = (1 << bits) - 1
    stored = np.rint(phantom.image.astype(np.float64) * top)
    if spec.photometric == "MONOCHROME1":
        stored = top - stored  # MONOCHROME1: the minimum value is displayed white
    allocated = 8 if bits == 8 else 16
    arr = stored.astype(np.uint8 if allocated == 8 else np.uint16)

    sop_class = UID(CR_STORAGE if spec.modality == "CR" else DX_STORAGE)
    sop_uid = generate_uid(entropy_srcs=["cxr-phantom", str(seed), str(index)])
    study_uid = generate_uid(entropy_srcs=["cxr-phantom-study", str(seed), str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cxr-phantom-series", str(seed), str(index)])
    rng = np.random.default_rng([seed, index, 7])
    date = dt.date(2026, 1, 1) + dt.timedelta(days=int(rng.integers(0, 300)))
    ds.StudyDate = ds.ContentDate = ds.AcquisitionDate = date.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = ds.AcquisitionTime = (
        f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00"
    )
    ds.Modality = spec.modality
    ds.Manufacturer = "CXR Engine synthetic phantom"
    ds.InstitutionName = "Synthetic"
    ds.PatientID = patient_id if patient_id is not None else f"PH{seed % 100000:05d}-{index:05d}"
    ds.PatientName = NAMES[index % len(NAMES)]
    ds.PatientAge = f"{int(rng.integers(18, 90)):03d}Y"
    ds.PatientSex = "F" if rng.random() < 0.5 else "M"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyDescription = "SYNTHETIC PHANTOM - NOT A PATIENT"
    ds.ImageComments = "Synthetic phantom: " + (", ".join(phantom.findings) or "no findings")
    if spec.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [0.15, 0.15] if arr.shape[0] >= 2000 else [round(0.15 * 2048 / arr.shape[0], 4)] * 2
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    if spec.windowed:
        ds.WindowCenter = top / 2.0
        ds.WindowWidth = float(top + 1)
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = arr.tobytes()
    if spec.compressed:
        ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg")
    return ds


def write_phantoms(
    out_dir: Path,
    count: int,
    *,
    seed: int = 1000,
    size: int = 2048,
    start: int = 0,
    compression: str = "mixed",
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Write ``count`` phantom DICOM files and ``phantoms.json``; return the index records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(start, start + count):
        phantom = make_phantom(seed, index, size=size)
        spec = PhantomFileSpec.for_index(index, compression)
        ds = phantom_dataset(phantom, seed=seed, index=index, spec=spec)
        name = f"phantom_{seed}_{index:05d}.dcm"
        ds.save_as(out_dir / name, enforce_file_format=True)
        records.append(
            {
                "file": name,
                "patient_id": str(ds.PatientID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "findings": phantom.findings,
                "boxes": {k: [round(v, 4) for v in box] for k, box in phantom.boxes.items()},
                "modality": spec.modality,
                "photometric": spec.photometric,
                "bits_stored": spec.bits_stored,
                "transfer_syntax": str(ds.file_meta.TransferSyntaxUID.name),
            }
        )
        if progress is not None:
            progress(1)
    index_path = out_dir / "phantoms.json"
    existing = json.loads(index_path.read_text()) if index_path.exists() else []
    by_file = {r["file"]: r for r in existing}
    by_file.update({r["file"]: r for r in records})
    index_path.write_text(
        json.dumps(sorted(by_file.values(), key=lambda r: r["file"]), indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    return records
