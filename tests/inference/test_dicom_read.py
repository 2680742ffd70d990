"""Tests for inference.dicom_read: whole files in, DicomImage or a reasoned refusal out."""

from __future__ import annotations

import json
import random
import re
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from inference import dicom_read
from inference.dicom_header import ReadOptions, check_eligibility, read_patient_info
from inference.dicom_load import load_dataset
from inference.dicom_read import read_dicom_image
from inference.errors import (
    DecodeError,
    MissingPatientId,
    UnreadableDicom,
    UnsupportedImage,
    UnsupportedModality,
)
from inference.image import DicomImage
from tests.support.fuzz_corpus import blank_datasets, dataset_bytes

Testdata = Callable[[str], str]
MakeDataset = Callable[..., Any]
WriteDicom = Callable[..., Path]
WriteBytes = Callable[[bytes, str], Path]

ANY_MODALITY = ReadOptions(
    accepted_modalities=frozenset({"CR", "DX", "SC", "OT", "", "CT", "MR", "US", "NM", "RTDOSE"})
)
PROVENANCE_KEYS = {
    "transfer_syntax_uid",
    "transfer_syntax",
    "decoder",
    "photometric_interpretation",
    "inverted",
    "inversion_reason",
    "modality_lut",
    "voi",
    "frame",
    "number_of_frames",
    "original_rows",
    "original_columns",
    "samples_per_pixel",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "pixel_spacing_mm",
    "pixel_spacing_source",
    "pixel_sha256",
    "notes",
}


def assert_model_input(image: DicomImage, shape: tuple[int, int]) -> None:
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == shape
    assert image.pixels.flags.c_contiguous
    assert 0.0 <= float(image.pixels.min()) and float(image.pixels.max()) <= 1.0
    assert set(image.provenance) == PROVENANCE_KEYS
    assert json.loads(json.dumps(image.provenance)) == image.provenance


# ------------------------------------------------------------------- options


def test_options_from_env_parse_the_modality_list() -> None:
    options = ReadOptions.from_env({"CXR_ACCEPTED_MODALITIES": " cr, DX ,NONE,, "})

    assert options.accepted_modalities == frozenset({"CR", "DX", ""})
    assert options.max_side == 16384 and options.max_pixels == 100_000_000


@pytest.mark.parametrize("env", [{}, {"CXR_ACCEPTED_MODALITIES": "  "}])
def test_options_from_env_default_when_unset_or_blank(env: dict[str, str]) -> None:
    assert ReadOptions.from_env(env) == ReadOptions()


def test_options_from_env_refuse_a_list_of_nothing() -> None:
    with pytest.raises(ValueError, match="CXR_ACCEPTED_MODALITIES"):
        ReadOptions.from_env({"CXR_ACCEPTED_MODALITIES": ",,"})


def test_max_pixels_comes_from_the_environment_and_bounds_header_and_inflation(
    make_dataset: MakeDataset, write_dicom: WriteDicom
) -> None:
    options = ReadOptions.from_env({"CXR_MAX_PIXELS": " 1_000 ", "CXR_ACCEPTED_MODALITIES": "CR"})
    assert (options.max_pixels, options.accepted_modalities) == (1000, frozenset({"CR"}))
    assert options.max_inflated_bytes == 4 * 1000 + (16 << 20)
    path = write_dicom(make_dataset())  # 32 x 32 = 1024 values
    with pytest.raises(
        UnsupportedImage, match=r"Rows 32 x \(0028,0011\) Columns 32 x 1 samples exceeds the limit of 1000"
    ):
        read_dicom_image(path, options)
    assert read_dicom_image(path, ReadOptions.from_env({"CXR_MAX_PIXELS": "1024"})).pixels.shape == (32, 32)


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1.5e8"])
def test_a_bad_max_pixels_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=rf"CXR_MAX_PIXELS must be a whole number above 0, got '{re.escape(raw)}'"):
        ReadOptions.from_env({"CXR_MAX_PIXELS": raw})


# ------------------------------------------------------------ a good CR file


def test_synthetic_cr_end_to_end(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    ds = make_dataset(
        WindowCenter=2048,
        WindowWidth=4096,
        RescaleSlope=1,
        RescaleIntercept=0,
        ImagerPixelSpacing=[0.139, 0.14],
        AcquisitionDate="20240131",
        AcquisitionTime="091500",
    )
    path = write_dicom(ds)

    image = read_dicom_image(path)

    assert_model_input(image, (32, 32))
    assert image.path == str(path)
    p = image.provenance
    assert p["decoder"] == "native"
    assert p["transfer_syntax"] == "Explicit VR Little Endian"
    assert p["photometric_interpretation"] == "MONOCHROME2"
    assert (p["inverted"], p["inversion_reason"]) == (False, None)
    assert p["modality_lut"] == {"method": "rescale", "slope": 1.0, "intercept": 0.0}
    assert p["voi"] == {
        "method": "window",
        "center": 2048.0,
        "width": 4096.0,
        "function": "LINEAR",
    }
    assert (p["frame"], p["number_of_frames"]) == (0, 1)
    assert (p["original_rows"], p["original_columns"], p["samples_per_pixel"]) == (
        32,
        32,
        1,
    )
    assert (p["bits_allocated"], p["bits_stored"], p["pixel_representation"]) == (
        16,
        16,
        0,
    )
    assert p["pixel_spacing_mm"] == [0.139, 0.14]
    assert p["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert p["notes"] == []
    patient = image.patient
    assert patient.patient_id == "PID-0001"
    assert patient.patient_name == "Doe^Jane"
    assert (patient.age, patient.sex, patient.modality) == ("045Y", "F", "CR")
    assert (patient.view_position, patient.body_part) == ("PA", "CHEST")
    assert patient.sop_instance_uid == ds.SOPInstanceUID
    assert patient.acquisition_datetime == "20240131091500"


def test_pixel_spacing_wins_over_imager_pixel_spacing(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    ds = make_dataset(PixelSpacing=[0.1, 0.2], ImagerPixelSpacing=[0.139, 0.139])

    p = read_dicom_image(write_dicom(ds)).provenance

    assert (p["pixel_spacing_mm"], p["pixel_spacing_source"]) == (
        [0.1, 0.2],
        "PixelSpacing",
    )


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"AcquisitionDateTime": "20240102030405.5"}, "20240102030405.5"),
        ({"AcquisitionDate": "20240102", "AcquisitionTime": "0304"}, "202401020304"),
        ({"ContentDate": "20240103", "ContentTime": "111111"}, "20240103111111"),
        ({}, "20240131093000"),  # StudyDate + StudyTime
        ({"StudyDate": None, "StudyTime": None}, ""),
    ],
)
def test_acquisition_datetime_fallback_order(attrs: dict[str, Any], expected: str, make_dataset: MakeDataset) -> None:
    info = read_patient_info(make_dataset(**attrs), None)

    assert info.acquisition_datetime == expected


def test_monochrome1_file_is_inverted_and_says_why(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    ramp = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)
    ds = make_dataset(ramp, photometric="MONOCHROME1", bits_stored=12, PresentationLUTShape="INVERSE")

    image = read_dicom_image(write_dicom(ds))

    np.testing.assert_allclose(image.pixels, 1 - ramp / 4095, atol=1e-6)  # min/max, then once
    assert image.provenance["inverted"] is True
    assert "inverted once" in image.provenance["inversion_reason"]


def test_colour_scanned_film_without_modality(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2, :, 1] = 255  # green above black: one colour only would be a blank image
    ds = make_dataset(rgb, photometric="RGB", Modality=None)

    image = read_dicom_image(write_dicom(ds))

    np.testing.assert_allclose(image.pixels[:2], 0.587, atol=1e-6)
    np.testing.assert_allclose(image.pixels[2:], 0.0, atol=1e-6)
    assert image.patient.modality == ""
    assert image.provenance["voi"] == {"method": "none"}
    assert "colour image converted to grayscale (BT.601 luma)" in image.provenance["notes"]


def test_file_without_preamble_is_read_with_force(make_dataset: MakeDataset, tmp_path: Path) -> None:
    ds = make_dataset()
    ds.file_meta = FileMetaDataset()  # no File Meta group, no preamble: bare data set
    path = tmp_path / "raw.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert b"DICM" not in path.read_bytes()[:200]

    image = read_dicom_image(path)

    assert_model_input(image, (32, 32))
    assert image.provenance["transfer_syntax"] == "Implicit VR Little Endian"


def test_real_file_without_preamble(testdata: Testdata) -> None:
    # OT-PAL-8-face.dcm has no preamble / File Meta; palette colour
    image = read_dicom_image(testdata("OT-PAL-8-face.dcm"), ANY_MODALITY, "face")

    assert_model_input(image, (480, 640))
    assert "palette colour image converted to grayscale (BT.601 luma)" in image.provenance["notes"]


# -------------------------------------------------------------- real radiograph


@pytest.fixture(scope="module")
def rg1() -> dict[str, DicomImage]:
    """pydicom-data's RG1: one CR chest radiograph, MONOCHROME1, three encodings."""
    from pydicom.data import get_testdata_file

    names = {"unc": "RG1_UNCR.dcm", "j2kr": "RG1_J2KR.dcm", "j2ki": "RG1_J2KI.dcm"}
    return {key: read_dicom_image(str(get_testdata_file(name))) for key, name in names.items()}


def test_rg1_lossless_forms_are_identical(rg1: dict[str, DicomImage]) -> None:
    unc, j2kr = rg1["unc"], rg1["j2kr"]

    np.testing.assert_array_equal(unc.pixels, j2kr.pixels)
    assert unc.provenance["pixel_sha256"] == j2kr.provenance["pixel_sha256"]
    assert (unc.provenance["decoder"], j2kr.provenance["decoder"]) == (
        "native",
        "pylibjpeg",
    )
    assert unc.provenance["transfer_syntax_uid"] != j2kr.provenance["transfer_syntax_uid"]


def test_rg1_lossy_form_is_close_but_not_identical(rg1: dict[str, DicomImage]) -> None:
    unc, j2ki = rg1["unc"], rg1["j2ki"]

    assert j2ki.provenance["pixel_sha256"] != unc.provenance["pixel_sha256"]
    assert float(np.abs(j2ki.pixels - unc.pixels).mean()) < 0.01


def test_rg1_is_displayed_with_dark_lungs(rg1: dict[str, DicomImage]) -> None:
    image = rg1["unc"]
    px = image.pixels
    rows, cols = px.shape

    def mean(r0: float, r1: float, c0: float, c1: float) -> float:
        return float(px[int(rows * r0) : int(rows * r1), int(cols * c0) : int(cols * c1)].mean())

    right_lung = mean(0.30, 0.60, 0.20, 0.40)
    left_lung = mean(0.30, 0.60, 0.60, 0.80)
    mediastinum = mean(0.30, 0.60, 0.45, 0.55)

    assert right_lung < mediastinum - 0.1
    assert left_lung < mediastinum - 0.1
    assert_model_input(image, (1955, 1841))
    p = image.provenance
    assert p["photometric_interpretation"] == "MONOCHROME1"
    assert (p["inverted"], p["inversion_reason"]) == (True, "MONOCHROME1")
    assert p["voi"] == {
        "method": "window",
        "center": 15000.0,
        "width": 30000.0,
        "function": "LINEAR",
    }
    # RG1 carries PixelSpacing "0.000\0.000": not a spacing, so it is dropped
    assert p["pixel_spacing_mm"] is None
    assert any("(0028,0030)" in note for note in p["notes"])
    assert (image.patient.patient_id, image.patient.modality) == ("9RG1", "CR")
    assert (image.patient.view_position, image.patient.body_part) == ("PA", "CHEST")


# ------------------------------------------------- other modalities, end to end


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_jp2klossless.dcm",
        "US1_J2KR.dcm",
        "emri_small_RLE.dcm",
        "JPEG-LL.dcm",
    ],
)
def test_non_chest_modalities_are_refused_by_default(name: str, testdata: Testdata) -> None:
    with pytest.raises(UnsupportedModality, match=r"\(0008,0060\) Modality '(CT|MR|US|NM)'"):
        read_dicom_image(testdata(name), patient_id_override="X")


@pytest.mark.parametrize(
    ("name", "decoder", "shape", "frames"),
    [
        ("CT_small.dcm", "native", (128, 128), 1),
        ("MR_small_implicit.dcm", "native", (64, 64), 1),
        ("MR_small_bigendian.dcm", "native", (64, 64), 1),
        ("image_dfl.dcm", "native", (512, 512), 1),
        ("MR_small_RLE.dcm", "pylibjpeg", (64, 64), 1),
        ("JPGExtended.dcm", "pylibjpeg", (1024, 256), 1),
        ("JPEG-LL.dcm", "pylibjpeg", (1024, 256), 1),
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "pylibjpeg", (100, 100), 1),
        ("emri_small_jpeg_ls_lossless.dcm", "pylibjpeg", (64, 64), 10),
        ("JPEG2000.dcm", "pylibjpeg", (1024, 256), 1),
        ("US1_J2KR.dcm", "pylibjpeg", (480, 640), 1),
        ("OBXXXX1A_expb.dcm", "native", (600, 800), 1),
        ("rtdose.dcm", "native", (10, 10), 15),
    ],
)
def test_reference_files_end_to_end_when_accepted(
    name: str, decoder: str, shape: tuple[int, int], frames: int, testdata: Testdata
) -> None:
    image = read_dicom_image(testdata(name), ANY_MODALITY, patient_id_override="X")

    assert_model_input(image, shape)
    assert image.provenance["decoder"] == decoder
    assert image.provenance["number_of_frames"] == frames
    if frames > 1:
        assert image.provenance["notes"][0] == f"multi-frame: used frame 0 of {frames}"


def test_known_bad_jpeg_end_to_end_is_a_decode_error(testdata: Testdata) -> None:
    with pytest.raises(DecodeError, match="JPEG Extended"):
        read_dicom_image(testdata("JPEG-lossy.dcm"), ANY_MODALITY, patient_id_override="X")


def test_garbage_jpeg_stream_is_a_decode_error(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    ds = make_dataset(np.zeros((8, 8), np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(range(60)) + b"\xff\xd9"])

    with pytest.raises(DecodeError, match=r"JPEG Baseline .*1\.2\.840\.10008\.1\.2\.4\.50"):
        read_dicom_image(write_dicom(ds))


# ----------------------------------------------------------------- refusals


def test_zero_length_file(write_bytes: WriteBytes) -> None:
    with pytest.raises(UnreadableDicom, match="zero-length"):
        read_dicom_image(write_bytes(b"", "empty.dcm"))


def test_random_bytes(write_bytes: WriteBytes) -> None:
    noise = random.Random(1234).randbytes(4096)

    with pytest.raises(UnreadableDicom, match="not DICOM"):
        read_dicom_image(write_bytes(noise, "noise.dcm"))


def test_text_file(write_bytes: WriteBytes) -> None:
    text = b"Patient list\nID,Name\n42,Doe^John\n" * 20

    with pytest.raises(UnreadableDicom, match="not DICOM"):
        read_dicom_image(write_bytes(text, "notes.dcm"))


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableDicom, match="cannot open"):
        read_dicom_image(tmp_path / "gone.dcm")


def test_dicomdir_is_refused(testdata: Testdata) -> None:
    with pytest.raises(UnsupportedImage, match=r"DICOMDIR .*1\.2\.840\.10008\.1\.3\.10"):
        read_dicom_image(testdata("DICOMDIR"))


def test_object_without_pixel_data(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    # e.g. a scanned document stored as Encapsulated PDF with Modality OT
    ds = make_dataset(PixelData=None, SOPClassUID="1.2.840.10008.5.1.4.1.1.104.1", Modality="OT")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID

    with pytest.raises(UnsupportedImage, match=r"no \(7FE0,0010\) Pixel Data"):
        read_dicom_image(write_dicom(ds))


def test_float_pixel_data_is_refused(make_dataset: MakeDataset) -> None:
    ds = make_dataset(PixelData=None)
    ds.FloatPixelData = np.zeros(32 * 32, "<f4").tobytes()

    with pytest.raises(UnsupportedImage, match=r"\(7FE0,0008\) FloatPixelData"):
        check_eligibility(ds, ReadOptions())


def test_missing_patient_id_names_the_tag(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    path = write_dicom(make_dataset(PatientID="  "))

    with pytest.raises(MissingPatientId, match=r"\(0010,0020\)"):
        read_dicom_image(path)


def test_patient_id_override_replaces_a_missing_id(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    path = write_dicom(make_dataset(PatientID=None))

    image = read_dicom_image(path, patient_id_override=" REQ-7 ")

    assert image.patient.patient_id == "REQ-7"


def test_ct_is_refused_with_default_options(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    path = write_dicom(make_dataset(Modality="CT"))

    with pytest.raises(UnsupportedModality, match=r"\(0008,0060\) Modality 'CT' is not accepted"):
        read_dicom_image(path)


def test_absurd_rows_are_refused_before_decoding(
    make_dataset: MakeDataset, write_dicom: WriteDicom, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_dataset(np.zeros((2, 2), np.uint16))
    ds.Rows = 60000
    ds.Columns = 60000  # 7.2 GB of 16-bit pixels promised, 8 bytes present
    path = write_dicom(ds)

    def must_not_decode(*_: object) -> None:
        raise AssertionError("decoding was attempted")

    monkeypatch.setattr(dicom_read, "decode_first_frame", must_not_decode)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(UnsupportedImage, match=r"\(0028,0010\) Rows 60000 is outside 1\.\.16384"):
            read_dicom_image(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5 * 2**20


def test_too_many_pixels_names_rows_and_columns(make_dataset: MakeDataset) -> None:
    ds = make_dataset()
    ds.Rows, ds.Columns = 10000, 10001

    with pytest.raises(
        UnsupportedImage,
        match=r"\(0028,0010\) Rows 10000 x \(0028,0011\) Columns 10001",
    ):
        check_eligibility(ds, ReadOptions())


@pytest.mark.parametrize(("keyword", "tag"), [("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")])
def test_zero_or_missing_dimensions(keyword: str, tag: str, make_dataset: MakeDataset) -> None:
    ds = make_dataset()
    setattr(ds, keyword, 0)
    with pytest.raises(UnsupportedImage, match=re.escape(f"{tag} {keyword} 0 is outside")):
        check_eligibility(ds, ReadOptions())
    delattr(ds, keyword)
    with pytest.raises(UnsupportedImage, match=re.escape(f"{tag} {keyword} is absent")):
        check_eligibility(ds, ReadOptions())


def test_native_pixel_data_shorter_than_a_frame(make_dataset: MakeDataset, write_dicom: WriteDicom) -> None:
    ds = make_dataset()
    ds.PixelData = ds.PixelData[:1000]  # declared length matches: a writer bug, not a cut

    with pytest.raises(UnreadableDicom, match=r"truncated: \(7FE0,0010\) Pixel Data holds 1000 bytes"):
        read_dicom_image(write_dicom(ds))


# ---------------------------------------------------------------- truncation


@pytest.fixture
def cr_file_bytes(make_dataset: MakeDataset, write_dicom: WriteDicom) -> Callable[[bool], bytes]:
    def build(rle: bool) -> bytes:
        ds = make_dataset()
        if rle:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        return write_dicom(ds, "whole.dcm").read_bytes()

    return build


def offset_of(data: bytes, tag_bytes: bytes) -> int:
    index = data.find(tag_bytes)
    assert index > 0
    return index


PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
PATIENT_NAME_TAG = b"\x10\x00\x10\x00"


@pytest.mark.parametrize(
    ("rle", "cut", "error", "pattern"),
    [
        (False, lambda d: 64, UnreadableDicom, "not DICOM"),  # inside the preamble
        (False, lambda d: 140, UnreadableDicom, "could be read"),  # inside File Meta
        (
            False,
            lambda d: offset_of(d, PATIENT_NAME_TAG) + 10,
            UnreadableDicom,
            r"truncated: \(0010,0010\)",
        ),
        (
            False,
            lambda d: offset_of(d, PIXEL_DATA_TAG) + 3,
            UnreadableDicom,
            "truncated: file ends 3 bytes",
        ),
        # cut exactly between elements: a CR Image Storage object must have pixels
        (
            False,
            lambda d: offset_of(d, PIXEL_DATA_TAG),
            UnreadableDicom,
            r"'Computed Radiography Image Storage' requires \(7FE0,0010\)",
        ),
        (
            False,
            lambda d: len(d) - 700,
            UnreadableDicom,
            r"truncated: \(7FE0,0010\) PixelData declares 2048",
        ),
        (
            True,
            lambda d: offset_of(d, PIXEL_DATA_TAG) + 40,
            UnreadableDicom,
            "truncated or corrupt",
        ),
        (
            True,
            lambda d: len(d) - 8,
            UnreadableDicom,
            "truncated or corrupt",
        ),  # no sequence delimiter
    ],
    ids=[
        "preamble",
        "file-meta",
        "header-value",
        "element-header",
        "element-boundary",
        "native-pixels",
        "rle-pixels",
        "rle-delimiter",
    ],
)
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
def test_truncated_files_are_refused_with_the_right_reason(
    rle: bool,
    cut: Callable[[bytes], int],
    error: type[Exception],
    pattern: str,
    cr_file_bytes: Callable[[bool], bytes],
    write_bytes: WriteBytes,
) -> None:
    data = cr_file_bytes(rle)
    path = write_bytes(data[: cut(data)], "cut.dcm")

    with pytest.raises(error, match=pattern):
        read_dicom_image(path)


def test_whole_files_used_for_truncation_read_fine(
    cr_file_bytes: Callable[[bool], bytes], write_bytes: WriteBytes
) -> None:
    for rle in (False, True):
        image = read_dicom_image(write_bytes(cr_file_bytes(rle), f"whole-{rle}.dcm"))
        assert image.provenance["decoder"] == ("pylibjpeg" if rle else "native")


def test_real_truncated_file(testdata: Testdata) -> None:
    # pydicom's MR_truncated.dcm: Pixel Data cut short
    with pytest.raises(UnreadableDicom, match=r"truncated: \(7FE0,0010\) PixelData declares 8192 bytes"):
        load_dataset(testdata("MR_truncated.dcm"))


# --------------------------------------------------------------- blank images


BLANK_CAUSES = {
    "rescale-slope-1e308": r"\(0028,1053\) Rescale Slope 1e\+308 and \(0028,1052\) Rescale Intercept 0 give \d+ of "
    r"4096 values that are not finite \(overflow\); the image would be blank",
    "constant-pixels": r"the displayed image is blank \(standard deviation 0 .*every pixel value is 1000 "
    r"\(a constant image\)",
    "window-above-every-value": r"the displayed image is blank .*\(0028,1050\) Window Center 1e\+06 / \(0028,1051\) "
    r"Window Width 100 \(LINEAR\) maps every value to \(nearly\) one grey",
}


def write_file(ds: pydicom.Dataset, path: Path) -> Path:
    path.write_bytes(dataset_bytes(ds))
    return path


@pytest.mark.parametrize("label", sorted(BLANK_CAUSES))
def test_a_blank_image_is_refused_naming_the_cause(label: str, tmp_path: Path) -> None:
    """Each was processed and answered "Normal" before; the same file without what blanks
    it is processed (so the refusal is the blankness, nothing else)."""
    ds, _ = blank_datasets()[label]
    with pytest.raises(UnsupportedImage, match=BLANK_CAUSES[label]):
        read_dicom_image(write_file(ds, tmp_path / "blank.dcm"))

    if label == "rescale-slope-1e308":
        ds.RescaleSlope = "1"
    elif label == "window-above-every-value":
        del ds.WindowCenter, ds.WindowWidth
    else:
        values = np.frombuffer(ds.PixelData, np.uint16).copy()
        values[::2] = 0  # two values: a picture again
        ds.PixelData = values.tobytes()
    image = read_dicom_image(write_file(ds, tmp_path / "fixed.dcm"))
    assert float(image.pixels.std()) > 0.1
