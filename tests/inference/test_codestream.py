"""Decompression bombs: a codestream's own header is read, and must agree with the DICOM
header, before any plugin decodes frame 0 (``inference.codestream``); a deflated dataset
is measured before pydicom inflates it (``inference.dicom_load``).

The bombs are built by ``tests/support/fuzz_corpus.py`` (small valid files with a patched
SIZ / SOF / RLE header, a deflate stream of zeros) or here from pydicom's own JPEG-LS
file. The memory test reads every bomb in a fresh Python process and checks its peak RSS
(``resource.getrusage``): on the code before these checks the same files took a reader
to 1.2 GB (J2K 12000 x 12000), 5.7 GB (J2K 30000 x 30000), 0.74 GB (JPEG 12000 x
12000) and 3.9 GB (2 GB of deflated zeros).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragments, parse_basic_offsets
from pydicom.uid import DeflatedExplicitVRLittleEndian

from inference.codestream import FrameHeader, jpeg2000_header, jpeg_header
from inference.dicom_header import ReadOptions
from inference.dicom_load import inflate_limit
from inference.dicom_read import read_dicom_image
from inference.errors import DecodeError, UnsupportedImage
from tests.support.fuzz_corpus import (
    dataset_bytes,
    deflated_bomb_bytes,
    j2k_bomb_dataset,
    jpeg_bomb_dataset,
    rle_bomb_dataset,
    valid_dataset,
)

ROOT = Path(__file__).resolve().parents[2]
Testdata = Callable[[str], str]


def first_fragment(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO(ds.PixelData)
    parse_basic_offsets(buffer)
    return next(generate_fragments(buffer))


def write(tmp_path: Path, ds: pydicom.Dataset, name: str = "bomb.dcm") -> Path:
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(dataset_bytes(ds))
    return path


# -------------------------------------------------------------------- parsers


def test_jpeg2000_siz_of_a_real_codestream_and_of_a_jp2_file() -> None:
    codestream = first_fragment(valid_dataset(1, compressed=True))
    assert jpeg2000_header(codestream) == FrameHeader("JPEG 2000 SIZ marker", 64, 64, 1)

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    jp2 = box(b"jP  ", b"\r\n\x87\n") + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ") + box(b"jp2c", codestream)
    assert jpeg2000_header(jp2).rows == 64
    with pytest.raises(DecodeError, match="JP2 file without a contiguous codestream box"):
        jpeg2000_header(jp2[: -len(codestream) - 8])
    with pytest.raises(DecodeError, match="does not start with SOC and SIZ"):
        jpeg2000_header(b"\xff\xd8" + codestream)


def test_jpeg_sof_of_a_real_stream_and_its_failures() -> None:
    stream = first_fragment(jpeg_bomb_dataset(64, 64))
    assert jpeg_header(stream) == FrameHeader("JPEG SOF0 marker", 64, 64, 1)
    sos = stream.find(b"\xff\xda")
    sof = stream.find(b"\xff\xc0")
    no_sof = stream[:sof] + stream[sos:]
    with pytest.raises(DecodeError, match=r"no frame header \(SOFn\) before its first scan"):
        jpeg_header(no_sof)
    with pytest.raises(DecodeError, match="segment is cut short"):
        jpeg_header(stream[: sof + 6])
    with pytest.raises(DecodeError, match="does not start with an SOI marker"):
        jpeg_header(stream[2:])


def test_jpeg_ls_sof55_and_an_lse_marker_that_enlarges_the_frame(testdata: Testdata) -> None:
    stream = first_fragment(pydicom.dcmread(testdata("MR_small_jpeg_ls_lossless.dcm")))
    assert jpeg_header(stream) == FrameHeader("JPEG-LS SOF55 marker", 64, 64, 1)
    sos = stream.find(b"\xff\xda")
    lse = b"\xff\xf8" + struct.pack(">HBB", 2 + 2 + 2 * 3, 4, 3) + (40000).to_bytes(3, "big") * 2
    header = jpeg_header(stream[:sos] + lse + stream[sos:])
    assert (header.source, header.rows, header.columns) == ("JPEG-LS LSE marker (ID 4)", 40000, 40000)


# ------------------------------------------------------------- bombs, refused


@pytest.mark.parametrize(
    ("make", "declared"),
    [
        (lambda: j2k_bomb_dataset(12000, 12000), "JPEG 2000 SIZ marker declares 12000 x 12000"),
        (lambda: j2k_bomb_dataset(30000, 30000), "JPEG 2000 SIZ marker declares 30000 x 30000"),
        (lambda: j2k_bomb_dataset(64, 65), "JPEG 2000 SIZ marker declares 64 x 65"),
        (lambda: jpeg_bomb_dataset(12000, 12000), "JPEG SOF0 marker declares 12000 x 12000"),
        (lambda: jpeg_bomb_dataset(0, 64), "JPEG SOF0 marker declares 0 x 64"),  # rows left to a DNL marker
    ],
    ids=["j2k-12000", "j2k-30000", "j2k-one-column-more", "jpeg-12000", "jpeg-dnl"],
)
def test_a_codestream_larger_than_its_header_is_refused_undecoded(
    make: Callable[[], pydicom.Dataset], declared: str, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedImage) as refused:
        read_dicom_image(write(tmp_path, make()))
    assert declared in refused.value.detail
    assert "DICOM header (0028,0010) Rows x (0028,0011) Columns 64 x 64" in refused.value.detail
    assert refused.value.reason == "unsupported_image"


def test_the_same_files_with_honest_headers_are_processed(testdata: Testdata, tmp_path: Path) -> None:
    jpeg_ls, rle = (pydicom.dcmread(testdata(n)) for n in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"))
    jpeg_ls.Modality = rle.Modality = "CR"
    for name, ds in {
        "j2k": j2k_bomb_dataset(64, 64),
        "jpeg": jpeg_bomb_dataset(64, 64),
        "jpeg-ls": jpeg_ls,
        "rle": rle,
    }.items():
        image = read_dicom_image(write(tmp_path, ds, f"{name}.dcm"))
        assert image.pixels.shape == (64, 64), name


def test_a_jpeg_ls_frame_larger_than_its_header_is_refused(testdata: Testdata, tmp_path: Path) -> None:
    ds = pydicom.dcmread(testdata("MR_small_jpeg_ls_lossless.dcm"))
    stream = bytearray(first_fragment(ds))
    sof55 = stream.find(b"\xff\xf7")
    struct.pack_into(">HH", stream, sof55 + 5, 20000, 20000)
    ds.PixelData = encapsulate([bytes(stream)])
    ds.Modality = "CR"  # an MR file: only the modality would refuse it otherwise
    with pytest.raises(UnsupportedImage, match=r"JPEG-LS SOF55 marker declares 20000 x 20000 pixels"):
        read_dicom_image(write(tmp_path, ds))


def test_a_codestream_with_more_components_than_samples_is_refused(tmp_path: Path) -> None:
    ds = valid_dataset(1, compressed=True)
    codestream = bytearray(first_fragment(ds))
    struct.pack_into(">H", codestream, 40, 3)  # Csiz: 3 components for a 1-sample image
    ds.PixelData = encapsulate([bytes(codestream)])
    with pytest.raises(UnsupportedImage, match=r"64 x 64 pixels \(rows x columns\) and 3 component\(s\)"):
        read_dicom_image(write(tmp_path, ds))


def test_rle_segments_must_fit_the_frame(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedImage, match=r"RLE segment 1 is 4000000 bytes, more than twice the 4096 bytes"):
        read_dicom_image(write(tmp_path, rle_bomb_dataset()))
    ds = rle_bomb_dataset(1000)
    frame = bytearray(first_fragment(ds))
    struct.pack_into("<I", frame, 0, 2)  # two segments for 8-bit, 1-sample data
    struct.pack_into("<I", frame, 8, 100)
    ds.PixelData = encapsulate([bytes(frame)])
    with pytest.raises(UnsupportedImage, match=r"RLE header lists 2 segments, but \(0028,0002\) 1 samples"):
        read_dicom_image(write(tmp_path, ds, "count.dcm"))


def test_a_frame_without_a_readable_header_is_a_decode_error(tmp_path: Path) -> None:
    ds = valid_dataset(1, compressed=True)
    ds.PixelData = encapsulate([b"\x00" * 200])
    with pytest.raises(DecodeError, match=r"JPEG 2000 .*does not start with SOC and SIZ markers"):
        read_dicom_image(write(tmp_path, ds))


# -------------------------------------------------------------------- deflate


def test_a_deflated_dataset_past_the_limit_is_refused_before_inflating_it(tmp_path: Path) -> None:
    options = ReadOptions(max_pixels=64 * 64)
    path = tmp_path / "deflated.dcm"
    path.write_bytes(deflated_bomb_bytes(64 << 20))
    start = time.perf_counter()
    with pytest.raises(UnsupportedImage) as refused:
        read_dicom_image(path, options)
    assert time.perf_counter() - start < 5.0  # stops at the limit (16 MiB), not after 64 MiB
    assert f"inflates to more than {inflate_limit(64 * 64)} bytes" in refused.value.detail
    assert f"deflated dataset ({path.stat().st_size} bytes" in refused.value.detail


def test_a_deflated_file_with_large_pixel_data_is_read_whole(tmp_path: Path) -> None:
    """Deflated values are not deferred: on the code before, a deferred 2 MiB Pixel Data
    was checked against the compressed file's size and refused as truncated."""
    ds = valid_dataset(0)
    pixels = np.random.default_rng(3).integers(0, 4096, (1024, 1024), dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = write(tmp_path, ds, "deflated-2mib.dcm")
    assert path.stat().st_size < len(ds.PixelData)

    image = read_dicom_image(path)
    assert image.provenance["transfer_syntax"] == "Deflated Explicit VR Little Endian"
    assert image.provenance["pixel_sha256"] == pydicom_hash(pixels)


def pydicom_hash(pixels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(pixels.astype("<u2").tobytes()).hexdigest()


# -------------------------------------------------------------- memory, measured

_MEASURE = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")
# The guard for the code before these checks: a bomb fails here instead of taking the machine.
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))
from inference.dicom_read import read_dicom_image
from inference.errors import CxrError
out = {}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    try:
        read_dicom_image(path)
        outcome = "processed"
    except CxrError as exc:
        outcome = exc.reason
    except MemoryError:
        outcome = "MemoryError"
    out[path] = [outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024]
print(json.dumps(out))
"""


def test_reading_every_bomb_costs_no_memory(tmp_path: Path) -> None:
    """Every bomb read in one fresh process: each is refused, and the peak RSS grows by less
    than 32 MiB over the whole run (on the code before: 1.2 GB to 5.7 GB per file)."""
    files = {
        "j2k-12000": dataset_bytes(j2k_bomb_dataset(12000, 12000)),
        "j2k-30000": dataset_bytes(j2k_bomb_dataset(30000, 30000)),
        "jpeg-12000": dataset_bytes(jpeg_bomb_dataset(12000, 12000)),
        "rle": dataset_bytes(rle_bomb_dataset()),
        "deflated-2GB": deflated_bomb_bytes(2_000_000_000),
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *paths], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout)
    assert {Path(p).name: m[0] for p, m in measured.items()} == {name: "unsupported_image" for name in files}
    growth = max(m[1] for m in measured.values())
    assert growth < 32, f"peak RSS grew by {growth:.0f} MiB: {measured}"
