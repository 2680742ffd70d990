"""Tests for inference.decode, driven by a table of real files nobody here wrote.

Expected stored values come from pydicom's own reference table
(pydicom/pydicom tests/pixels/pixels_reference.py) for the same files; where it
gives none, lossless variants are checked against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from inference.decode import (
    NATIVE_DECODER,
    decode_first_frame,
    order_plugins,
    resolve_transfer_syntax,
)
from inference.dicom_read import build_display_image
from inference.errors import DecodeError
from inference.pixels import pixel_sha256

Testdata = Callable[[str], str]
s_ = np.s_


@dataclass(frozen=True)
class Ref:
    name: str
    syntax: UID
    decoder: str
    shape: tuple[int, ...]
    dtype: str
    checks: list[tuple[Any, Any]] = field(default_factory=list)
    frames: int = 1
    atol: int = 0


MR_SMALL = [
    (s_[0, 31:34], (422, 319, 361)),
    (s_[31, :3], (366, 363, 322)),
    (s_[-1, -3:], (1369, 1129, 862)),
]
EMRI_FRAME0 = [
    (s_[0, 31:34], (206, 197, 159)),
    (s_[31, :3], (49, 78, 128)),
    (s_[-1, -3:], (362, 219, 135)),
]
SC_RGB = [
    (s_[5, 50], (255, 0, 0)),
    (s_[15, 50], (255, 128, 128)),
    (s_[25, 50], (0, 255, 0)),
    (s_[45, 50], (0, 0, 255)),
    (s_[75, 50], (64, 64, 64)),
    (s_[95, 50], (255, 255, 255)),
]
SC_YBR_AS_RGB = [  # pydicom's "as_rgb" expectations for the YBR_FULL file
    (s_[5, 50], (254, 0, 0)),
    (s_[15, 50], (255, 127, 127)),
    (s_[25, 50], (0, 255, 5)),
    (s_[35, 50], (129, 255, 129)),
    (s_[75, 50], (64, 64, 64)),
    (s_[95, 50], (255, 255, 255)),
]
OBXXXX1A = [
    (s_[0, :5], (244,) * 5),
    (s_[300, 491:494], (1, 246, 1)),
    (s_[-1, :3], (0, 0, 0)),
]
RTDOSE_FRAME0 = [
    (s_[0, :3], (1249000, 1249000, 1250000)),
    (s_[4, 3:6], (1031000, 1029000, 1027000)),
    (s_[-1, -3:], (803000, 801000, 798000)),
]
PL = "pylibjpeg"

REFERENCE = [
    Ref(
        "MR_small.dcm",
        ExplicitVRLittleEndian,
        NATIVE_DECODER,
        (64, 64),
        "int16",
        MR_SMALL,
    ),
    Ref(
        "MR_small_implicit.dcm",
        ImplicitVRLittleEndian,
        NATIVE_DECODER,
        (64, 64),
        "int16",
        MR_SMALL,
    ),
    Ref(
        "MR_small_bigendian.dcm",
        ExplicitVRBigEndian,
        NATIVE_DECODER,
        (64, 64),
        "int16",
        MR_SMALL,
    ),
    Ref("MR_small_RLE.dcm", RLELossless, PL, (64, 64), "int16", MR_SMALL),
    Ref("MR_small_jp2klossless.dcm", JPEG2000Lossless, PL, (64, 64), "int16", MR_SMALL),
    Ref("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, PL, (64, 64), "int16", MR_SMALL),
    Ref(
        "emri_small.dcm",
        ExplicitVRLittleEndian,
        NATIVE_DECODER,
        (64, 64),
        "uint16",
        EMRI_FRAME0,
        10,
    ),
    Ref("emri_small_RLE.dcm", RLELossless, PL, (64, 64), "uint16", EMRI_FRAME0, 10),
    Ref(
        "emri_small_big_endian.dcm",
        ExplicitVRBigEndian,
        NATIVE_DECODER,
        (64, 64),
        "uint16",
        EMRI_FRAME0,
        10,
    ),
    Ref(
        "emri_small_jpeg_2k_lossless.dcm",
        JPEG2000Lossless,
        PL,
        (64, 64),
        "uint16",
        EMRI_FRAME0,
        10,
    ),
    Ref(
        "emri_small_jpeg_ls_lossless.dcm",
        JPEGLSLossless,
        PL,
        (64, 64),
        "uint16",
        EMRI_FRAME0,
        10,
    ),
    Ref(
        "image_dfl.dcm",
        DeflatedExplicitVRLittleEndian,
        NATIVE_DECODER,
        (512, 512),
        "uint8",
        [(s_[300, 255:263], (138, 65, 65, 65, 65, 35, 35, 35))],
    ),
    Ref(
        "OBXXXX1A.dcm",
        ExplicitVRLittleEndian,
        NATIVE_DECODER,
        (600, 800),
        "uint8",
        OBXXXX1A,
    ),
    Ref("OBXXXX1A_rle.dcm", RLELossless, PL, (600, 800), "uint8", OBXXXX1A),
    Ref(
        "SC_rgb.dcm",
        ExplicitVRLittleEndian,
        NATIVE_DECODER,
        (100, 100, 3),
        "uint8",
        SC_RGB,
    ),
    Ref("SC_rgb_rle.dcm", RLELossless, PL, (100, 100, 3), "uint8", SC_RGB),
    Ref("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, PL, (100, 100, 3), "uint8", SC_RGB),
    Ref("SC_rgb_dcmtk_+eb+cr.dcm", JPEGBaseline8Bit, PL, (100, 100, 3), "uint8", SC_RGB),
    Ref(
        "SC_ybr_full_uncompressed.dcm",
        ExplicitVRLittleEndian,
        NATIVE_DECODER,
        (100, 100, 3),
        "uint8",
        SC_YBR_AS_RGB,
    ),
    # JPEG baseline YBR_FULL_422: lossy, compared with the uncompressed YBR file
    Ref(
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",
        JPEGBaseline8Bit,
        PL,
        (100, 100, 3),
        "uint8",
        SC_YBR_AS_RGB,
        atol=3,
    ),
    Ref(
        "color3d_jpeg_baseline.dcm",
        JPEGBaseline8Bit,
        PL,
        (480, 640, 3),
        "uint8",
        # Y with neutral chroma: R = G = B = Y after pydicom's YBR -> RGB
        [(s_[278, 300:310, c], (64, 76, 86, 95, 95, 97, 98, 98, 106, 108)) for c in range(3)],
        frames=120,
    ),
    Ref("US1_J2KR.dcm", JPEG2000Lossless, PL, (480, 640, 3), "uint8"),
    Ref("US1_J2KI.dcm", JPEG2000, PL, (480, 640, 3), "uint8"),
    Ref("JPEG2000.dcm", JPEG2000, PL, (1024, 256), "int16"),
    Ref(
        "J2K_pixelrep_mismatch.dcm",
        JPEG2000Lossless,
        PL,
        (512, 512),
        "int16",
        [
            (s_[0, 0], -2000),
            (s_[47:57, 279], (621, 412, 138, -193, -520, -767, -907, -966, -988, -995)),
        ],
    ),
    Ref(
        "GDCMJ2K_TextGBR.dcm",
        JPEG2000Lossless,
        PL,
        (400, 400, 3),
        "uint8",
        [
            (s_[45, 140], (223, 32, 32)),
            (s_[46, 140], (255, 0, 0)),
            (s_[350, 195], (128, 128, 128)),
        ],
    ),
    Ref(
        "JPEG-LL.dcm",
        JPEGLosslessSV1,
        PL,
        (1024, 256),
        "int16",
        [
            (s_[400, 124:132], (60, 58, 61, 68, 59, 65, 64, 67)),
            (s_[600, 124:132], (3, 1, 2, 0, 2, 1, 2, 0)),
        ],
    ),
    Ref(
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        JPEGLosslessSV1,
        PL,
        (768, 1024),
        "uint8",
        [
            (s_[300, 512:520], (26, 26, 25, 22, 19, 16, 14, 15)),
            (s_[600, 512:520], (45, 43, 41, 38, 33, 30, 26, 21)),
        ],
    ),
    Ref(
        "JPGExtended.dcm",
        JPEGExtended12Bit,
        PL,
        (1024, 256),
        "uint16",
        [(s_[420, 140], 244), (s_[230, 120], 95)],
    ),
    Ref("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless, PL, (50, 10), "uint16"),
    Ref(
        "rtdose.dcm",
        ImplicitVRLittleEndian,
        NATIVE_DECODER,
        (10, 10),
        "uint32",
        RTDOSE_FRAME0,
        15,
    ),
    Ref("rtdose_rle.dcm", RLELossless, PL, (10, 10), "uint32", RTDOSE_FRAME0, 15),
    Ref(
        "liver_1frame.dcm",  # Bits Allocated 1
        ExplicitVRLittleEndian,
        NATIVE_DECODER,
        (512, 512),
        "uint8",
        [(s_[155, 180:183], (0, 1, 1)), (s_[254, 304:310], (1, 0, 0, 1, 1, 0))],
    ),
]

# Variants that must decode to identical stored values (lossless re-encodings; the
# last two pairs are lossy files whose decodes pydicom's table pins to the *_UNC*).
SAME_IMAGE = [
    (
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_padded.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ),
    (
        "emri_small.dcm",
        "emri_small_RLE.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ),
    ("SC_rgb.dcm", "SC_rgb_expb.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm"),
    ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"),
    ("rtdose.dcm", "rtdose_expb.dcm", "rtdose_rle.dcm"),
    ("US1_UNCR.dcm", "US1_J2KR.dcm"),
    (
        "693_UNCR.dcm",
        "693_J2KR.dcm",
    ),  # J2K precision 14 vs Bits Stored 16 in the header
    ("US1_UNCI.dcm", "US1_J2KI.dcm"),
    ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
]


def decode_file(path: str) -> tuple[Any, Any, Any]:
    ds = dcmread(path, force=True)
    stored, info = decode_first_frame(ds)
    return ds, stored, info


@pytest.mark.parametrize("ref", REFERENCE, ids=lambda r: r.name)
def test_reference_file_decodes_first_frame(ref: Ref, testdata: Testdata) -> None:
    ds, stored, info = decode_file(testdata(ref.name))

    assert info.transfer_syntax_uid == ref.syntax
    assert info.transfer_syntax == ref.syntax.name
    assert info.decoder == ref.decoder
    assert stored.shape == ref.shape
    assert stored.dtype == np.dtype(ref.dtype)
    assert (info.frame, info.number_of_frames) == (0, ref.frames)
    assert (info.rows, info.columns) == ref.shape[:2]
    for index, expected in ref.checks:
        np.testing.assert_allclose(stored[index], expected, atol=ref.atol, rtol=0)

    pixels, record = build_display_image(stored, info, ds)

    assert pixels.dtype == np.float32
    assert pixels.shape == ref.shape[:2]
    assert np.isfinite(pixels).all()
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert record["inverted"] is False  # none of these files is MONOCHROME1


def test_colour_files_report_rgb_after_decoding(testdata: Testdata) -> None:
    for name in (
        "SC_ybr_full_uncompressed.dcm",
        "US1_J2KR.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    ):
        _, _, info = decode_file(testdata(name))
        assert info.photometric_interpretation == "RGB", name


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding:UserWarning")
@pytest.mark.parametrize("names", SAME_IMAGE, ids=lambda names: names[0])
def test_variants_of_one_image_decode_identically(names: tuple[str, ...], testdata: Testdata) -> None:
    decoded = [decode_file(testdata(name)) for name in names]
    ds0, stored0, info0 = decoded[0]
    pixels0, _ = build_display_image(stored0, info0, ds0)

    for name, (ds, stored, info) in zip(names[1:], decoded[1:], strict=True):
        np.testing.assert_array_equal(stored, stored0, err_msg=name)
        assert pixel_sha256(stored) == pixel_sha256(stored0), name
        pixels, _ = build_display_image(stored, info, ds)
        np.testing.assert_array_equal(pixels, pixels0, err_msg=name)


def test_multi_frame_decodes_only_frame_zero(testdata: Testdata) -> None:
    ds = dcmread(testdata("emri_small.dcm"))
    all_frames = ds.pixel_array

    stored, info = decode_first_frame(ds)

    assert all_frames.shape == (10, 64, 64)
    np.testing.assert_array_equal(stored, all_frames[0])
    assert (info.frame, info.number_of_frames) == (0, 10)


# ------------------------------------------------------------ failures and plugins


def test_known_bad_jpeg_is_a_decode_error_naming_the_syntax(testdata: Testdata) -> None:
    # JPEG-lossy.dcm has an invalid scan stop value: pydicom's table notes that
    # pylibjpeg refuses it and the 12-bit data is beyond Pillow.
    ds = dcmread(testdata("JPEG-lossy.dcm"))

    with pytest.raises(DecodeError) as caught:
        decode_first_frame(ds)

    detail = caught.value.detail
    assert "JPEG Extended" in detail and "1.2.840.10008.1.2.4.51" in detail
    assert "pylibjpeg:" in detail and "pillow:" in detail
    assert "\n" not in detail


def test_transfer_syntax_without_decoder_is_a_decode_error(
    make_dataset: Callable[..., Any],
) -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile

    with pytest.raises(DecodeError, match=r"no pixel data decoder for transfer syntax MPEG2.*4\.100"):
        decode_first_frame(ds)


def test_missing_plugins_are_a_decode_error(monkeypatch: pytest.MonkeyPatch, testdata: Testdata) -> None:
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg",)})
    ds = dcmread(testdata("MR_small_jp2klossless.dcm"))

    with pytest.raises(
        DecodeError,
        match=r"no decoding plugin available for JPEG 2000.*pylibjpeg-openjpeg",
    ):
        decode_first_frame(ds)


def test_next_plugin_is_tried_and_recorded(monkeypatch: pytest.MonkeyPatch, testdata: Testdata) -> None:
    decoder = get_decoder(JPEG2000Lossless)
    real_as_array = decoder.as_array

    def pylibjpeg_fails(src: Any, **kwargs: Any) -> Any:
        if kwargs.get("decoding_plugin") == "pylibjpeg":
            raise RuntimeError("simulated plugin failure")
        return real_as_array(src, **kwargs)

    monkeypatch.setattr(decoder, "as_array", pylibjpeg_fails)
    _, reference, _ = decode_file(testdata("MR_small.dcm"))

    stored, info = decode_first_frame(dcmread(testdata("MR_small_jp2klossless.dcm")))

    assert info.decoder == "pillow"
    np.testing.assert_array_equal(stored, reference)


def test_native_pixel_data_too_short_is_a_decode_error(
    make_dataset: Callable[..., Any],
) -> None:
    ds = make_dataset()
    ds.PixelData = ds.PixelData[:100]

    with pytest.raises(DecodeError, match="Explicit VR Little Endian"):
        decode_first_frame(ds)


@pytest.mark.parametrize(
    "syntax",
    [
        RLELossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        HTJ2K,
    ],
    ids=lambda uid: uid.name,
)
def test_every_compressed_syntax_has_a_plugin_installed(syntax: UID) -> None:
    # Sites fail with "no available image handler" when a plugin is missing;
    # JPEG Lossless P14 and HTJ2K have no sample file here, so check install.
    assert order_plugins(get_decoder(syntax).available_plugins)[0] == "pylibjpeg"


def test_plugins_follow_the_preference_order() -> None:
    assert order_plugins(["pillow", "zzz", "gdcm", "pylibjpeg"]) == [
        "pylibjpeg",
        "gdcm",
        "pillow",
        "zzz",
    ]


def test_transfer_syntax_is_inferred_for_files_without_file_meta(
    testdata: Testdata,
) -> None:
    ds = dcmread(testdata("ExplVR_BigEndNoMeta.dcm"), force=True)

    assert resolve_transfer_syntax(ds) == ExplicitVRBigEndian


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS:UserWarning")
def test_invalid_number_of_frames_names_the_tag(testdata: Testdata) -> None:
    ds = dcmread(testdata("badVR.dcm"))  # (0028,0008) is "1A"

    with pytest.raises(DecodeError, match=r"\(0028,0008\) Number of Frames .*'1A'"):
        decode_first_frame(ds)


# ------------------------------------------------- high bits and signed pixels


GARBAGE_HIGH_BITS = np.array([[0x0FFF | 0xF000, 0x0123 | 0xA000], [0x0800, 0x07FF | 0x5000]], np.uint16)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["native", "rle"])
def test_unused_high_bits_are_masked(syntax: UID, make_dataset: Callable[..., Any]) -> None:
    ds = make_dataset(GARBAGE_HIGH_BITS, bits_stored=12)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, encoding_plugin="pydicom")

    stored, info = decode_first_frame(ds)

    np.testing.assert_array_equal(stored, [[0x0FFF, 0x0123], [0x0800, 0x07FF]])
    assert info.bits_stored == 12


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["native", "rle"])
def test_signed_12_bit_values_are_sign_extended(syntax: UID, make_dataset: Callable[..., Any]) -> None:
    ds = make_dataset(GARBAGE_HIGH_BITS.view(np.int16), bits_stored=12)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, encoding_plugin="pydicom")

    stored, info = decode_first_frame(ds)

    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, [[-1, 0x0123], [-2048, 2047]])
    assert info.pixel_representation == 1


def test_signed_16_bit_full_range(make_dataset: Callable[..., Any]) -> None:
    values = np.array([[-32768, -1], [0, 32767]], dtype=np.int16)

    stored, _ = decode_first_frame(make_dataset(values))

    np.testing.assert_array_equal(stored, values)
    assert stored.dtype == np.int16


def test_big_endian_arrays_come_back_in_native_byte_order(testdata: Testdata) -> None:
    stored, _ = decode_first_frame(dcmread(testdata("MR_small_bigendian.dcm")))

    assert stored.dtype.isnative
