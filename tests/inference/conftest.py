"""Fixtures for the DICOM reading stage: small synthetic datasets written to tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")

MakeDataset = Callable[..., Dataset]
WriteDicom = Callable[..., Path]


def build_dataset(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attrs: Any,
) -> Dataset:
    """A minimal CR image dataset (Explicit VR Little Endian) around ``pixels``.

    ``pixels`` (rows, cols) or (rows, cols, 3); its dtype sets Bits Allocated and
    Pixel Representation. ``None`` gives a 32x32 ramp of 12-bit values. Keyword
    arguments set or override any element by keyword; a value of ``None``
    deletes the element.
    """
    if pixels is None:
        pixels = (np.arange(32 * 32).reshape(32, 32) * 4 % 4096).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PID-0001"
    ds.PatientName = "Doe^Jane"
    ds.PatientAge = "045Y"
    ds.PatientSex = "F"
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDate = "20240131"
    ds.StudyTime = "093000"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attrs.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a conformant Part 10 file (preamble, DICM, File Meta)."""
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def make_dataset() -> MakeDataset:
    return build_dataset


@pytest.fixture
def write_dicom(tmp_path: Path) -> WriteDicom:
    """``write_dicom(ds, name="image.dcm") -> Path`` inside this test's tmp_path."""

    def write(ds: Dataset, name: str = "image.dcm") -> Path:
        return write_dataset(ds, tmp_path / name)

    return write


@pytest.fixture
def write_bytes(tmp_path: Path) -> Callable[[bytes, str], Path]:
    def write(data: bytes, name: str = "file.dcm") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


def find_testdata(name: str) -> str:
    """Path of a file shipped with pydicom or pydicom-data (read by nobody here)."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not available in pydicom / pydicom-data"
    return str(path)


@pytest.fixture
def testdata() -> Callable[[str], str]:
    """``testdata("MR_small.dcm") -> path`` of a pydicom / pydicom-data file."""
    return find_testdata


# -- third-party-style model bundles (bench/app_models.py), once per session ----
@pytest.fixture(scope="session")
def app_bundles(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``app_bundles("xception") -> bundle folder``, built on first use and kept for the
    session (Keras Applications with ``weights=None``: seconds each on 2 cores)."""
    from bench import app_models as mb
    from inference.predict import configure_tensorflow

    configure_tensorflow()
    root = tmp_path_factory.mktemp("app-bundles")
    recipes = {
        "xception": (mb.build_xception, mb.xception_manifest),
        "densenet": (mb.build_densenet, mb.densenet_manifest),
        "efficientnet": (mb.build_efficientnet, mb.efficientnet_manifest),
        "tiny": (mb.build_tiny, mb.tiny_manifest),
    }
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            build, manifest = recipes[name]
            built[name] = mb.write_bundle(root / name, build(), manifest())
        return built[name]

    return get


@pytest.fixture(scope="session")
def parity_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(an 8-bit grey PNG, a DICOM holding exactly its pixels), 300 x 360 (not square).

    The DICOM's window (center 128, width 256, LINEAR) maps stored value v to v / 255
    exactly, so the engine's 8-bit display image is the PNG's pixels."""
    import cv2

    from demo.phantoms import make_phantom

    root = tmp_path_factory.mktemp("parity")
    image = cv2.resize(make_phantom(31, 4, size=720).image, (360, 300), interpolation=cv2.INTER_AREA)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    png = root / "image.png"
    cv2.imwrite(str(png), pixels)
    ds = build_dataset(pixels, WindowCenter="128", WindowWidth="256")
    return png, write_dataset(ds, root / "image.dcm")
