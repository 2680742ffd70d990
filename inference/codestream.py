"""Frame headers of compressed Pixel Data: the size a codestream declares, read before decoding.

A decoder sizes its output from the codestream's *own* header (JPEG 2000 SIZ marker,
JPEG SOFn, JPEG-LS SOF55 and LSE, the RLE header), not from the DICOM header's
(0028,0010) Rows and (0028,0011) Columns, which ``check_eligibility`` holds to
``ReadOptions`` (``CXR_MAX_PIXELS``). A 5 KB file whose DICOM header says 64 x 64 and
whose JPEG 2000 SIZ marker says 12000 x 12000 made the decoder allocate 1.2 GB before it
failed (a decompression bomb). So, before any plugin sees frame 0, ``check_frame_header``
reads that frame's header from the start of its first fragment (bytes the header pass
already holds in memory) and refuses, as ``UnsupportedImage``, a frame whose rows,
columns or components differ from (0028,0010), (0028,0011) and (0028,0002). Equal
dimensions are within the limits the DICOM header was already held to; and a mismatch
loses no image that decoded correctly before (pydicom shapes the decoded frame with the
DICOM header's dimensions, so a frame of another size never decoded to a usable image).

RLE Lossless (PS3.5 Annex G) has no dimensions of its own: each of its segments decodes
to rows x columns bytes. Its header must list samples x bytes-per-sample segments (as
pydicom checks after decoding), and no segment may be longer than twice the bytes it
decodes to: a conformant encoder needs at most N + N/128 bytes for N (literal runs),
while two bytes of a crafted segment expand to 128, and pydicom's own RLE decoder
decodes a segment whole before it checks the length (4 MB of segment took it to 300 MB).

A frame whose header cannot be found (no SIZ marker after SOC, no SOFn before the first
SOS, an RLE header under 64 bytes) is a ``DecodeError``: its size cannot be checked, so
it is not decoded. So is an encapsulated transfer syntax this module does not know (none
of pydicom 3.0's decodable syntaxes is unknown here). The parsers are plain functions of
bytes (ITU-T T.800 A.5.1, T.81 B.2.2, T.87 C.2.2 and C.2.4.1.4, DICOM PS3.5 G.5).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from inference.errors import DecodeError, UnsupportedImage

#: How many bytes of frame 0 (its first fragments, joined) are searched for its header.
HEADER_SCAN_BYTES = 1 << 20

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_SOC_SIZ = b"\xff\x4f\xff\x51"
#: JPEG markers that start a frame header (T.81 B.1.1.3): SOF0-3, 5-7, 9-11, 13-15; SOF55 is JPEG-LS;
#: DHP (0xDE) is the frame header of a hierarchical process.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7, 0xDE}
_JPEG_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}
_SOS, _EOI, _LSE = 0xDA, 0xD9, 0xF8


@dataclass(frozen=True)
class FrameHeader:
    """What a compressed frame declares about its own size."""

    source: str  # e.g. "JPEG 2000 SIZ marker", "JPEG SOF1 marker", "JPEG-LS SOF55 marker"
    rows: int
    columns: int
    components: int


def check_frame_header(ds: Dataset, tsyntax: UID) -> FrameHeader | None:
    """Refuse frame 0 of encapsulated ``ds`` if its own header disagrees with the DICOM header.

    Returns the header read (``None`` for RLE, which has no dimensions of its own).
    Raises ``UnsupportedImage`` on a mismatch, ``DecodeError`` when no header is found.
    """
    rows, columns = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    samples = _header_int(ds, "SamplesPerPixel", default=1)
    fragments = frame_fragments(ds.PixelData)
    if tsyntax == RLELossless:
        first = next(fragments, b"")
        check_rle_header(first, rows, columns, samples, _header_int(ds, "BitsAllocated", default=8))
        return None
    prefix = _join(fragments, HEADER_SCAN_BYTES)
    if tsyntax in JPEG2000TransferSyntaxes:
        header = jpeg2000_header(prefix)
    elif tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        header = jpeg_header(prefix)
    else:
        raise DecodeError(f"{tsyntax.name} ({tsyntax}): the size of a frame cannot be checked before decoding")
    if (header.rows, header.columns, header.components) != (rows, columns, samples):
        raise UnsupportedImage(
            f"frame 0's {header.source} declares {header.rows} x {header.columns} pixels (rows x columns) "
            f"and {header.components} component(s), the DICOM header (0028,0010) Rows x (0028,0011) Columns "
            f"{rows} x {columns} and (0028,0002) {samples} sample(s): not decoded (a decompression bomb or "
            "a corrupt file)"
        )
    return header


def frame_fragments(pixel_data: bytes) -> Iterator[bytes]:
    """The fragments after the Basic Offset Table (frame 0 starts at the first one)."""
    buffer = io.BytesIO(pixel_data)
    try:
        parse_basic_offsets(buffer)
        yield from generate_fragments(buffer)
    except (ValueError, struct.error) as exc:
        raise DecodeError(f"(7FE0,0010) encapsulated Pixel Data is malformed ({exc})") from exc


def _join(fragments: Iterator[bytes], limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    for fragment in fragments:
        parts.append(bytes(fragment[: limit - size]))
        size += len(parts[-1])
        if size >= limit:
            break
    return b"".join(parts)


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise UnsupportedImage(f"{keyword} is absent")
        return default
    return int(value)


# ------------------------------------------------------------------ JPEG 2000


def jpeg2000_header(data: bytes) -> FrameHeader:
    """Image size and component count from the SIZ marker (T.800 A.5.1), which must follow
    SOC directly; a JP2 file (not allowed in DICOM, but written by some) is searched for its
    contiguous codestream box first."""
    if data.startswith(_JP2_SIGNATURE):
        data = _jp2_codestream(data)
    if not data.startswith(_SOC_SIZ):
        raise DecodeError("frame 0 is not a JPEG 2000 codestream: it does not start with SOC and SIZ markers")
    if len(data) < 42:
        raise DecodeError("frame 0's JPEG 2000 SIZ marker is cut short")
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, 8)
    (csiz,) = struct.unpack_from(">H", data, 40)
    return FrameHeader("JPEG 2000 SIZ marker", rows=ysiz - yosiz, columns=xsiz - xosiz, components=csiz)


def _jp2_codestream(data: bytes) -> bytes:
    """The contents of the first 'jp2c' box of a JP2 file (ISO/IEC 15444-1 I.4)."""
    offset = 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if length == 1:
            if offset + 16 > len(data):
                break
            (length,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        if kind == b"jp2c":
            return data[offset + header : offset + length] if length else data[offset + header :]
        if length < header:
            break
        offset += length
    raise DecodeError("frame 0 is a JP2 file without a contiguous codestream box")


# ----------------------------------------------------------- JPEG and JPEG-LS


def jpeg_header(data: bytes) -> FrameHeader:
    """Size and component count from the first frame header: SOFn (T.81 B.2.2), SOF55
    (JPEG-LS, T.87 C.2.2, where an LSE marker of ID 4 may give larger dimensions,
    T.87 C.2.4.1.4) or DHP (hierarchical), whichever comes before the first SOS."""
    if not data.startswith(b"\xff\xd8"):
        raise DecodeError("frame 0 is not a JPEG stream: it does not start with an SOI marker")
    offset = 2
    header: FrameHeader | None = None
    while True:
        offset = data.find(b"\xff", offset)  # bytes between segments: not conformant, skipped as decoders do
        if offset < 0:
            break
        while offset < len(data) and data[offset] == 0xFF:
            offset += 1  # fill bytes
        if offset >= len(data):
            break
        marker = data[offset]
        offset += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (_SOS, _EOI):
            break
        if offset + 2 > len(data):
            break
        (length,) = struct.unpack_from(">H", data, offset)
        segment = data[offset + 2 : offset + length]
        if length < 2 or len(segment) < length - 2:
            raise DecodeError(f"frame 0's JPEG marker 0xFF{marker:02X} segment is cut short")
        if marker in _JPEG_SOF and header is None:
            if len(segment) < 6:
                raise DecodeError(f"frame 0's JPEG frame header (0xFF{marker:02X}) is cut short")
            rows, columns, components = struct.unpack_from(">HHB", segment, 1)
            header = FrameHeader(_sof_name(marker), rows, columns, components)
        elif marker == _LSE and header is not None and segment[:1] == b"\x04" and len(segment) >= 2:
            width = segment[1]
            if width and len(segment) >= 2 + 2 * width:
                rows = int.from_bytes(segment[2 : 2 + width], "big")
                columns = int.from_bytes(segment[2 + width : 2 + 2 * width], "big")
                header = FrameHeader("JPEG-LS LSE marker (ID 4)", rows, columns, header.components)
        offset += length
    if header is None:
        raise DecodeError("frame 0's JPEG stream has no frame header (SOFn) before its first scan")
    return header


def _sof_name(marker: int) -> str:
    if marker == 0xF7:
        return "JPEG-LS SOF55 marker"
    if marker == 0xDE:
        return "JPEG DHP marker"
    return f"JPEG SOF{marker - 0xC0} marker"


# ----------------------------------------------------------------------- RLE


def check_rle_header(fragment: bytes, rows: int, columns: int, samples: int, bits_allocated: int) -> None:
    """Refuse an RLE frame whose segments could decode to more than the DICOM header's frame."""
    if len(fragment) < 64:
        raise DecodeError(f"frame 0's RLE header is {len(fragment)} bytes, not 64")
    count = struct.unpack_from("<I", fragment, 0)[0]
    if count > 15:
        raise DecodeError(f"frame 0's RLE header lists {count} segments (at most 15)")
    if bits_allocated % 8 == 0 and count != samples * (bits_allocated // 8):
        raise UnsupportedImage(
            f"frame 0's RLE header lists {count} segments, but (0028,0002) {samples} samples of "
            f"(0028,0100) {bits_allocated} bits need {samples * (bits_allocated // 8)}: not decoded"
        )
    offsets = list(struct.unpack_from(f"<{count}I", fragment, 4))
    decoded = rows * columns
    most = 2 * decoded + 64
    view = memoryview(fragment)
    for index, start in enumerate(offsets):
        end = offsets[index + 1] if index + 1 < count else len(fragment)
        length = len(view[start:end])  # the slice a decoder takes, whatever the offsets
        if length > most:
            raise UnsupportedImage(
                f"frame 0's RLE segment {index + 1} is {length} bytes, more than twice the {decoded} bytes "
                f"of a (0028,0010) Rows {rows} x (0028,0011) Columns {columns} frame: not decoded "
                "(a decompression bomb or a corrupt file)"
            )
