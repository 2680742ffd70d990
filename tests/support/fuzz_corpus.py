"""A small fuzz corpus of hostile DICOM files, written by plain functions into a folder.

``build_corpus(folder)`` writes every file and returns one ``CorpusEntry`` per file: its
name and the outcome the engine must give it, ``"processed"`` or a skip reason code of
``inference.errors``. Broken files must be reasoned skips; files with hostile but valid
content (patient ids with ``/``, ``\\``, ``..``, NUL, 1,000 characters, only dots,
non-Latin, odd character sets) are valid DICOM and must be *processed* into a sanitised
folder strictly inside the output root.

The images are 64 x 64 phantoms (``demo.phantom_dicom``): the corpus is about the
header and the bytes, not the pixels, and small images keep the model and the PDF cheap.
Everything is deterministic (fixed seeds, fixed UIDs) so a failure names the same file
on every run.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments, parse_basic_offsets
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from demo.phantom_dicom import PhantomFileSpec, phantom_dataset
from demo.phantoms import make_phantom

SIZE = 64
SEED = 9090
PROCESSED = "processed"

#: Patient ids that are valid DICOM but hostile as folder names. Every one must be
#: processed into its own, distinct, safe folder directly under the output root.
HOSTILE_PATIENT_IDS: dict[str, str] = {
    "slash": "../../../../tmp/cxr-escape",
    "backslash": "..\\..\\windows\\system32",
    "dotdot": "..",
    "dot": ".",
    "only_dots": "....",
    "nul_inside": "PAT\x00HIDDEN",
    "long_1000": "L" * 1000,
    "absolute": "/etc/passwd",
    "arabic": "مريض-٤٢",
    "cjk": "患者李雷",
    "emoji": "😀🩻",
    "device_name": "CON",
    "leading_dash": "-rf",
    "spaces_tabs": " \t PAT 7 \t",
    "bidi_override": "PAT\u202egnp.exe",
    "tilde_lookalike": "a_b~12345678",
}


@dataclass(frozen=True)
class CorpusEntry:
    """One file of the corpus and the outcome the engine must give it."""

    name: str
    expect: str  # "processed" or a skip reason code
    note: str
    patient_id: str | None = None  # for processed files: the id the folder comes from


def valid_dataset(index: int = 0, patient_id: str | None = None, *, compressed: bool = False) -> Dataset:
    """A small, valid CR/DX phantom (uncompressed unless asked)."""
    spec = PhantomFileSpec.for_index(index, "j2k" if compressed else "none")
    ds = phantom_dataset(make_phantom(SEED, index, size=SIZE), seed=SEED, index=index, spec=spec, patient_id=patient_id)
    return ds


def dataset_bytes(ds: Dataset, *, enforce: bool = True, **encoding: bool) -> bytes:
    """The file ``ds`` as bytes; ``encoding`` (implicit_vr, little_endian) for odd syntaxes."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=enforce, **encoding)
    return buffer.getvalue()


def _write(folder: Path, name: str, data: bytes) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ----------------------------------------------------------------------- broken bytes


def _broken_bytes(folder: Path) -> list[CorpusEntry]:
    entries: list[CorpusEntry] = []
    rng = np.random.default_rng(SEED)
    _write(folder, "bytes/zero-length.dcm", b"")
    entries.append(CorpusEntry("bytes/zero-length.dcm", "unreadable_dicom", "zero-length file"))
    for size in (1, 131, 4096, 70_000):
        name = f"bytes/random-{size}.dcm"
        _write(folder, name, rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        entries.append(CorpusEntry(name, "unreadable_dicom", f"{size} random bytes"))
    name = "bytes/preamble-then-random.dcm"
    _write(folder, name, b"\x00" * 128 + b"DICM" + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    entries.append(CorpusEntry(name, "unreadable_dicom", "preamble and DICM, then random bytes"))
    name = "bytes/text.dcm"
    _write(folder, name, b"PatientID=1\nnot a DICOM file\n" * 20)
    entries.append(CorpusEntry(name, "unreadable_dicom", "a text file named .dcm"))
    return entries


def truncation_offsets(data: bytes) -> dict[str, int]:
    """Cut points in a valid file: inside the preamble, the meta, the header, the pixels."""
    pixel_tag = data.rfind(b"\xe0\x7f\x10\x00")
    patient_tag = data.find(b"\x10\x00\x20\x00")
    return {
        "in-preamble": 64,
        "after-dicm": 132,
        "in-file-meta": 160,
        "in-patient-id": patient_tag + 10,
        "before-pixel-tag": pixel_tag,
        "in-pixel-header": pixel_tag + 6,
        "pixels-half": pixel_tag + 12 + (len(data) - pixel_tag - 12) // 2,
        "last-byte-missing": len(data) - 1,
    }


def _truncated(folder: Path) -> list[CorpusEntry]:
    entries: list[CorpusEntry] = []
    for compressed in (False, True):
        data = dataset_bytes(valid_dataset(1 if compressed else 0, compressed=compressed))
        kind = "j2k" if compressed else "native"
        for label, offset in truncation_offsets(data).items():
            # Cutting the last byte of an encapsulated file only clips the sequence
            # delimiter after the last fragment: every pixel is there, so it is processed.
            expect = PROCESSED if compressed and label == "last-byte-missing" else "unreadable_dicom"
            name = f"truncated/{kind}-{label}.dcm"
            _write(folder, name, data[:offset])
            entries.append(CorpusEntry(name, expect, f"{kind} file cut at byte {offset} ({label})"))
    return entries


# --------------------------------------------------------------------- wrong headers


def _explicit_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, written by hand (any VR, any length)."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _replace_element(data: bytes, tag: int, new: bytes) -> bytes:
    """Swap the first top-level element ``tag`` of an Explicit VR LE file for ``new`` bytes."""
    group, elem = tag >> 16, tag & 0xFFFF
    start = data.find(struct.pack("<HH", group, elem), 132)
    assert start > 0, f"tag {tag:08X} not found"
    vr = data[start + 4 : start + 6]
    if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
        length = struct.unpack("<I", data[start + 8 : start + 12])[0]
        end = start + 12 + length
    else:
        length = struct.unpack("<H", data[start + 6 : start + 8])[0]
        end = start + 8 + length
    return data[:start] + new + data[end:]


def _wrong_headers(folder: Path) -> list[CorpusEntry]:
    entries: list[CorpusEntry] = []
    base = dataset_bytes(valid_dataset(0))
    edits: list[tuple[str, int, bytes, str, str]] = [
        (
            "rows-as-LO-text",
            0x00280010,
            _explicit_element(0x00280010, b"LO", b"huge"),
            "unsupported_image",
            "(0028,0010) Rows written with VR LO and a text value",
        ),
        (
            "rows-3-bytes",
            0x00280010,
            _explicit_element(0x00280010, b"US", b"\x40\x00\x00"),
            "unreadable_dicom",
            "(0028,0010) Rows US with a 3-byte value",
        ),
        (
            "rows-zero",
            0x00280010,
            _explicit_element(0x00280010, b"US", b"\x00\x00"),
            "unsupported_image",
            "(0028,0010) Rows 0",
        ),
        (
            "bits-allocated-64",
            0x00280100,
            _explicit_element(0x00280100, b"US", b"\x40\x00"),
            "unsupported_image",
            "(0028,0100) Bits Allocated 64",
        ),
        (
            "bits-allocated-zero",
            0x00280100,
            _explicit_element(0x00280100, b"US", b"\x00\x00"),
            "unsupported_image",
            "(0028,0100) Bits Allocated 0",
        ),
        (
            "samples-4",
            0x00280002,
            _explicit_element(0x00280002, b"US", b"\x04\x00"),
            "unsupported_image",
            "(0028,0002) Samples per Pixel 4",
        ),
        (
            "photometric-unknown",
            0x00280004,
            _explicit_element(0x00280004, b"CS", b"HSV "),
            "unsupported_image",
            "(0028,0004) HSV",
        ),
        (
            "slope-not-a-number",
            0x00281053,
            _explicit_element(0x00281053, b"DS", b"abc "),
            "unsupported_image",
            "(0028,1053) Rescale Slope 'abc'",
        ),
        (
            "patient-id-as-binary-OB",
            0x00100020,
            _explicit_element(0x00100020, b"OB", b"\xff\x00\xfe\x01"),
            PROCESSED,
            "(0010,0020) Patient ID written with VR OB and binary bytes",
        ),
        (
            "pixel-data-odd-length",
            0x7FE00010,
            _explicit_element(0x7FE00010, b"OW", b"\x01\x02\x03"),
            "unreadable_dicom",
            "(7FE0,0010) 3 bytes for a 64 x 64 frame",
        ),
        (
            "pixel-data-undefined-length-native",
            0x7FE00010,
            struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0xFFFFFFFF) + b"\x00" * 16,
            "unreadable_dicom",
            "native (7FE0,0010) with undefined length",
        ),
        (
            "sop-class-garbage",
            0x00080016,
            _explicit_element(0x00080016, b"UI", b"\xff\xfe\x00\x01"),
            PROCESSED,
            "(0008,0016) SOP Class UID of binary bytes",
        ),
    ]
    for label, tag, new, expect, note in edits:
        name = f"header/{label}.dcm"
        _write(folder, name, _replace_element(base, tag, new))
        entries.append(CorpusEntry(name, expect, note, patient_id=None))

    ds = valid_dataset(2)
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6.7")
    _write(
        folder,
        "header/unknown-transfer-syntax.dcm",
        dataset_bytes(ds, enforce=False, implicit_vr=False, little_endian=True),
    )
    entries.append(CorpusEntry("header/unknown-transfer-syntax.dcm", "decode_error", "transfer syntax 1.2.3.4.5.6.7"))

    explicit = dataset_bytes(valid_dataset(3))
    lie = str(ImplicitVRLittleEndian).encode().ljust(20, b"\x00")  # same length: the meta stays valid
    _write(folder, "header/meta-says-implicit-body-explicit.dcm", explicit.replace(b"1.2.840.10008.1.2.1\x00", lie, 1))
    entries.append(
        CorpusEntry(
            "header/meta-says-implicit-body-explicit.dcm",
            PROCESSED,
            "File Meta says Implicit VR, the body is Explicit (pydicom detects it)",
        )
    )

    ds = valid_dataset(4)
    ds.Modality = "CT"
    _write(folder, "header/modality-ct.dcm", dataset_bytes(ds))
    entries.append(CorpusEntry("header/modality-ct.dcm", "unsupported_modality", "CT"))

    for label, pid in (("empty", ""), ("blank", "    ")):
        ds = valid_dataset(5, patient_id=pid)
        _write(folder, f"header/patient-id-{label}.dcm", dataset_bytes(ds))
        entries.append(CorpusEntry(f"header/patient-id-{label}.dcm", "missing_patient_id", f"{label} Patient ID"))

    ds = valid_dataset(6)
    del ds.PixelData
    _write(folder, "header/image-without-pixel-data.dcm", dataset_bytes(ds))
    entries.append(
        CorpusEntry("header/image-without-pixel-data.dcm", "unreadable_dicom", "CR Image Storage without (7FE0,0010)")
    )
    return entries


def huge_header_dataset(rows: int = 65535, columns: int = 65535, samples: int = 3, frames: int = 1000) -> Dataset:
    """A file that promises ``rows x columns x samples x frames`` 16-bit values and holds 64 bytes."""
    ds = valid_dataset(7)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    if samples == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = b"\x00" * 64
    return ds


def many_frames_dataset(frames: int = 2_000_000_000) -> Dataset:
    """A complete, valid 64 x 64 first frame in a file that claims ``frames`` frames."""
    ds = valid_dataset(7)
    ds.NumberOfFrames = frames
    return ds


def _huge(folder: Path) -> list[CorpusEntry]:
    entries = []
    cases: list[tuple[str, Callable[[], Dataset], str]] = [
        ("65535x65535x3x1000", huge_header_dataset, "a 65535 x 65535 RGB 16-bit image x 1000 frames (25 TiB)"),
        ("16000x16000", lambda: huge_header_dataset(16000, 16000, 1, 1), "16000 x 16000 (256 M pixels)"),
        ("one-frame-ok-but-2e9-frames", many_frames_dataset, "a valid 64 x 64 first frame, but 2e9 frames promised"),
    ]
    for label, make, note in cases:
        name = f"huge/{label}.dcm"
        _write(folder, name, dataset_bytes(make()))
        # pydicom's native decoder checks the length against every promised frame.
        expect = "decode_error" if label.startswith("one-frame") else "unsupported_image"
        entries.append(CorpusEntry(name, expect, note))
    return entries


# ------------------------------------------------------------- decompression bombs


def _first_fragment(ds: Dataset) -> bytes:
    buffer = io.BytesIO(ds.PixelData)
    parse_basic_offsets(buffer)
    return next(generate_fragments(buffer))


def j2k_bomb_dataset(rows: int = 12000, columns: int = 12000, index: int = 41) -> Dataset:
    """A 64 x 64 JPEG 2000 phantom whose codestream's SIZ marker says ``rows`` x ``columns``
    (Xsiz, Ysiz patched; the tiles grown only as far as the 65535 tiles a codestream may
    have). The DICOM header still says 64 x 64: a 5 KB file that made the JPEG 2000
    decoder allocate 1.2 GB (12000 x 12000) before failing."""
    ds = valid_dataset(index, compressed=True)
    codestream = bytearray(_first_fragment(ds))
    assert codestream[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ
    struct.pack_into(">II", codestream, 8, columns, rows)  # Xsiz, Ysiz (XOsiz = YOsiz = 0)
    tile = struct.unpack_from(">I", codestream, 24)[0]
    while -(-rows // tile) * -(-columns // tile) > 65535:
        tile *= 2
    struct.pack_into(">II", codestream, 24, tile, tile)  # XTsiz, YTsiz
    ds.PixelData = encapsulate([bytes(codestream)])
    return ds


def jpeg_bomb_dataset(rows: int = 12000, columns: int = 12000, index: int = 42) -> Dataset:
    """A 64 x 64 8-bit JPEG Baseline phantom (OpenCV's encoder) whose SOF0 says ``rows`` x ``columns``."""
    ds = valid_dataset(index)
    pixels = ds.pixel_array
    ok, encoded = cv2.imencode(".jpg", (pixels >> max(int(ds.BitsStored) - 8, 0)).astype(np.uint8))
    assert ok
    stream = bytearray(encoded.tobytes())
    sof = stream.find(b"\xff\xc0")
    assert sof > 0
    struct.pack_into(">HH", stream, sof + 5, rows, columns)  # after marker, Lf, P
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes(stream)])
    return ds


def rle_bomb_dataset(segment_bytes: int = 4_000_000, index: int = 43) -> Dataset:
    """A 64 x 64 8-bit RLE frame whose one segment is ``segment_bytes`` of 2-byte replicate
    runs (each decodes to 128 bytes: 64-fold). pydicom's RLE decoder decodes the segment
    whole before checking its length (4 MB of segment: 300 MB)."""
    ds = valid_dataset(index)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    ds.PixelData = encapsulate([header + b"\x81\x00" * (segment_bytes // 2)])
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def deflated_bomb_bytes(inflated_bytes: int = 2_000_000_000, index: int = 44) -> bytes:
    """A Deflated Explicit VR Little Endian file: a 64 x 64 phantom's header, then (7FE0,0010)
    declaring ``inflated_bytes`` of zeros (2 GB by default: about 2 MB on disk).

    Built without ever holding the zeros: after a full flush, deflate's state is reset,
    so every further MiB of zeros compresses to the same bytes, repeated."""
    ds = valid_dataset(index)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    megabyte = 1 << 20
    blocks, rest = divmod(inflated_bytes, megabyte)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflater.compress(body.getvalue() + pixel_header) + deflater.flush(zlib.Z_FULL_FLUSH)
    block = deflater.compress(bytes(megabyte)) + deflater.flush(zlib.Z_FULL_FLUSH)
    again = deflater.compress(bytes(megabyte)) + deflater.flush(zlib.Z_FULL_FLUSH)
    assert again == block  # the state really was reset: the block may be repeated
    tail = deflater.compress(bytes(rest)) + deflater.flush()
    return meta.getvalue() + head + block * (blocks - 1) + tail


def _bombs(folder: Path) -> list[CorpusEntry]:
    entries = []
    cases: list[tuple[str, Callable[[], bytes], str]] = [
        ("j2k-siz-12000x12000", lambda: dataset_bytes(j2k_bomb_dataset()), "J2K SIZ 12000 x 12000, header 64 x 64"),
        ("j2k-siz-30000x30000", lambda: dataset_bytes(j2k_bomb_dataset(30000, 30000)), "J2K SIZ 30000 x 30000"),
        ("jpeg-sof-12000x12000", lambda: dataset_bytes(jpeg_bomb_dataset()), "JPEG SOF0 12000 x 12000"),
        ("rle-segment-64x", lambda: dataset_bytes(rle_bomb_dataset()), "4 MB RLE segment for a 4 KB frame"),
        ("deflated-512MiB-of-zeros", lambda: deflated_bomb_bytes(512 << 20), "deflated 512 MiB of zeros"),
    ]
    for label, make, note in cases:
        name = f"bomb/{label}.dcm"
        _write(folder, name, make())
        entries.append(CorpusEntry(name, "unsupported_image", note))
    return entries


# ------------------------------------------------------------------- blank images


def blank_datasets() -> dict[str, tuple[Dataset, str]]:
    """Valid files whose displayed image is blank: label -> (dataset, what makes it blank).
    Each one was answered "Normal" (the model saw an empty image)."""

    def twelve_bit(index: int, pixels: np.ndarray | None = None) -> Dataset:
        ds = valid_dataset(index)
        values = ds.pixel_array.astype(np.uint16) if pixels is None else pixels
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = values.tobytes()
        return ds

    overflow = twelve_bit(45)
    overflow.RescaleSlope, overflow.RescaleIntercept = "1e308", "0"
    constant = twelve_bit(46, np.full((SIZE, SIZE), 1000, dtype=np.uint16))
    window = twelve_bit(47)
    window.WindowCenter, window.WindowWidth = "1000000", "100"  # far above every value
    window.VOILUTFunction = "LINEAR"
    return {
        "rescale-slope-1e308": (overflow, "(0028,1053) Rescale Slope 1e308: the values overflow to infinity"),
        "constant-pixels": (constant, "every stored value 1000"),
        "window-above-every-value": (window, "(0028,1050) Window Center 1e6 / Width 100: every pixel one grey"),
    }


def _blank(folder: Path) -> list[CorpusEntry]:
    entries = []
    for label, (ds, note) in blank_datasets().items():
        name = f"blank/{label}.dcm"
        _write(folder, name, dataset_bytes(ds))
        entries.append(CorpusEntry(name, "unsupported_image", note))
    return entries


# -------------------------------------------------------------- nesting, charsets, ids


def nested_sequence_bytes(depth: int) -> bytes:
    """(0040,A730) Content Sequence nested ``depth`` levels, Explicit VR LE, undefined lengths.

    Written by hand, iteratively: pydicom's writer recurses per level (and its error
    message grows with every level), so it cannot write what this corpus must read.
    """
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    leaf = _explicit_element(0x00080100, b"SH", b"LEAF")
    return (sequence + item) * depth + leaf + (item_end + sequence_end) * depth


def _nested(folder: Path) -> list[CorpusEntry]:
    entries = []
    base = dataset_bytes(valid_dataset(8))
    pixel_tag = base.rfind(b"\xe0\x7f\x10\x00")
    for depth, expect in ((20, PROCESSED), (500, "unreadable_dicom"), (5000, "unreadable_dicom")):
        name = f"nested/sequence-{depth}-deep.dcm"
        _write(folder, name, base[:pixel_tag] + nested_sequence_bytes(depth) + base[pixel_tag:])
        entries.append(CorpusEntry(name, expect, f"(0040,A730) Content Sequence nested {depth} levels"))
    return entries


def _charsets(folder: Path) -> list[CorpusEntry]:
    entries = []

    def add(label: str, charset: str | list[str] | None, name_bytes: bytes, pid_bytes: bytes, note: str) -> None:
        ds = valid_dataset(9)
        if charset is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = charset
        ds.PatientName = name_bytes
        ds["PatientID"] = DataElement(0x00100020, "LO", pid_bytes)
        name = f"charset/{label}.dcm"
        _write(folder, name, dataset_bytes(ds))
        entries.append(CorpusEntry(name, PROCESSED, note, patient_id=pid_bytes.decode("latin-1")))

    add("unknown-charset", "ISO_IR 999", b"M\xfcller^J", b"CS-UNKNOWN", "(0008,0005) ISO_IR 999 (unknown)")
    add("utf8-invalid-bytes", "ISO_IR 192", b"\xff\xfe\xc3(^\x80", b"CS-\xff\xfe", "ISO_IR 192 with invalid UTF-8")
    add(
        "iso2022-japanese",
        ["", "ISO 2022 IR 87"],
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
        b"CS-2022",
        "multi-valued ISO 2022 with JIS X 0208 escapes",
    )
    add(
        "iso2022-bad-escape",
        ["", "ISO 2022 IR 87"],
        b"\x1b$Z\x00\xff^x",
        b"CS-ESC\x1b$Z",
        "ISO 2022 with an unknown escape sequence",
    )
    add("latin1-declared-ascii", None, b"M\xfcller", b"CS-\xe9\xe8", "no (0008,0005) and Latin-1 bytes")
    return entries


def _hostile_ids(folder: Path) -> list[CorpusEntry]:
    entries = []
    for i, (label, pid) in enumerate(HOSTILE_PATIENT_IDS.items()):
        ds = valid_dataset(10 + i)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds["PatientID"] = DataElement(0x00100020, "LO", pid.encode("utf-8"))
        name = f"ids/{label}.dcm"
        _write(folder, name, dataset_bytes(ds))
        entries.append(CorpusEntry(name, PROCESSED, f"Patient ID {pid[:40]!r}", patient_id=pid))
    return entries


def _non_image(folder: Path) -> list[CorpusEntry]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["cxr-fuzz-sr"])
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = "SR-1"
    ds.Modality = "SR"
    _write(folder, "header/structured-report.dcm", dataset_bytes(ds))
    return [CorpusEntry("header/structured-report.dcm", "unsupported_modality", "a Basic Text SR, no pixels")]


def build_corpus(folder: Path) -> list[CorpusEntry]:
    """Write the whole corpus under ``folder``; return its entries sorted by name."""
    entries: list[CorpusEntry] = []
    parts = (_broken_bytes, _truncated, _wrong_headers, _huge, _bombs, _blank, _nested, _charsets, _hostile_ids)
    for part in (*parts, _non_image):
        entries.extend(part(folder))
    ds = valid_dataset(30)
    _write(folder, "valid/plain.dcm", dataset_bytes(ds))
    entries.append(CorpusEntry("valid/plain.dcm", PROCESSED, "a valid phantom", patient_id=str(ds.PatientID)))
    ds = valid_dataset(31, compressed=True)
    _write(folder, "valid/j2k.dcm", dataset_bytes(ds))
    entries.append(CorpusEntry("valid/j2k.dcm", PROCESSED, "a valid JPEG 2000 phantom", patient_id=str(ds.PatientID)))
    return sorted(entries, key=lambda e: e.name)
