"""Decode stage: a DICOM dataset's first frame of pixel data, as stored values.

Input: a ``pydicom.Dataset`` holding (7FE0,0010) Pixel Data whose header
``dicom_read.check_eligibility`` already accepted.

Output: ``(stored, DecodeInfo)`` where ``stored`` is the first frame only (index 0,
also for multi-frame objects), shaped (rows, columns) or (rows, columns, samples),
integer dtype sized from Bits Allocated, native byte order. pydicom 3 has already
masked unused high bits / sign-extended signed data (``correct_unused_bits``) and
fixed JPEG-LS / JPEG 2000 signedness; YCbCr (YBR_FULL, YBR_FULL_422, YBR_RCT,
YBR_ICT) arrives converted to RGB and ``DecodeInfo.photometric_interpretation``
says so. ``DecodeInfo.decoder`` names the plugin that decoded the frame, or
``"native"`` for uncompressed transfer syntaxes.

Before any plugin sees an encapsulated frame, ``codestream.check_frame_header`` reads
the frame's own header (JPEG 2000 SIZ, JPEG SOFn, JPEG-LS SOF55, RLE header): a
codestream larger than the DICOM header says is a decompression bomb, refused as
``UnsupportedImage`` without being decoded.

Raises ``DecodeError`` (naming the transfer syntax) when no plugin is available or
every available plugin fails; any exception pydicom raises while decoding is
turned into a ``DecodeError`` with a one-line detail, never propagated raw.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from inference.codestream import check_frame_header
from inference.errors import DecodeError, reraise_if_interrupt

LOGGER = logging.getLogger(__name__)

NATIVE_DECODER = "native"
"""Name recorded as the decoder for uncompressed (native) transfer syntaxes."""

PLUGIN_PREFERENCE: tuple[str, ...] = (
    "pylibjpeg",
    "pydicom",
    "gdcm",
    "pyjpegls",
    "pillow",
)
"""Order in which pydicom decoding plugins are tried. Pillow last: pydicom's docs
warn it can alter data (8-bit only for 12-bit JPEG, lossy colour handling)."""

_MAX_DETAIL = 240


@dataclass(frozen=True)
class DecodeInfo:
    """What the decoder did, and the pixel layout of the array it returned."""

    transfer_syntax_uid: str
    transfer_syntax: str
    decoder: str
    photometric_interpretation: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    rows: int
    columns: int
    frame: int
    number_of_frames: int


def resolve_transfer_syntax(ds: Dataset) -> UID:
    """Return (0002,0010) Transfer Syntax UID, or infer it for files without meta.

    Files read with ``force=True`` may lack a File Meta group; pydicom still knows
    how it parsed them (``original_encoding``), which fixes a native syntax.
    """
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax:
        uid = UID(str(tsyntax).strip("\x00 "))
        if not uid.is_transfer_syntax:
            raise DecodeError(f"(0002,0010) Transfer Syntax UID {str(uid)[:64]!r} is not a known transfer syntax")
        return uid

    implicit_vr, little_endian = getattr(ds, "original_encoding", (None, None))
    if implicit_vr is True and little_endian is True:
        return ImplicitVRLittleEndian
    if implicit_vr is False and little_endian is True:
        return ExplicitVRLittleEndian
    if implicit_vr is False and little_endian is False:
        return ExplicitVRBigEndian
    raise DecodeError("(0002,0010) Transfer Syntax UID is absent and the encoding cannot be inferred")


def order_plugins(available: Iterable[str]) -> list[str]:
    """Return ``available`` plugin names in ``PLUGIN_PREFERENCE`` order, unknown last."""
    names = set(available)
    preferred = [name for name in PLUGIN_PREFERENCE if name in names]
    return preferred + sorted(names.difference(PLUGIN_PREFERENCE))


def count_frames(ds: Dataset) -> int:
    """Return (0028,0008) Number of Frames; absent, empty or 0 means 1 (as pydicom)."""
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError):
        raise DecodeError(f"(0028,0008) Number of Frames has invalid value {value!r}")
    if frames < 0:
        raise DecodeError(f"(0028,0008) Number of Frames has invalid value {value!r}")
    return frames or 1


def decode_first_frame(ds: Dataset) -> tuple[np.ndarray, DecodeInfo]:
    """Decode frame 0 of ``ds`` and say how; see the module docstring."""
    tsyntax = resolve_transfer_syntax(ds)
    ts_label = f"{tsyntax.name} ({tsyntax})"
    number_of_frames = count_frames(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DecodeError(f"no pixel data decoder for transfer syntax {ts_label}")

    if decoder.is_native:
        arr, props = _decode_native(decoder, ds, ts_label)
        used = NATIVE_DECODER
    else:
        try:
            check_frame_header(ds, tsyntax)  # the codestream's own size, before any plugin allocates it
        except DecodeError as exc:
            raise DecodeError(f"{ts_label}: {exc.detail}") from exc
        arr, props, used = _decode_encapsulated(decoder, ds, ts_label)

    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    info = DecodeInfo(
        transfer_syntax_uid=str(tsyntax),
        transfer_syntax=tsyntax.name,
        decoder=used,
        photometric_interpretation=str(props.get("photometric_interpretation", "")),
        bits_allocated=int(props.get("bits_allocated", ds.get("BitsAllocated") or 0)),
        bits_stored=int(props.get("bits_stored", ds.get("BitsStored") or 0)),
        pixel_representation=int(props.get("pixel_representation", ds.get("PixelRepresentation") or 0)),
        samples_per_pixel=int(props.get("samples_per_pixel", 1)),
        rows=int(arr.shape[0]),
        columns=int(arr.shape[1]),
        frame=0,
        number_of_frames=number_of_frames,
    )
    return arr, info


def _decode_native(decoder: Decoder, ds: Dataset, ts_label: str) -> tuple[np.ndarray, dict[str, str | int]]:
    try:
        return decoder.as_array(ds, index=0)
    except MemoryError:
        raise  # the process's memory bound, not the file's encoding: read_dicom_image reports it
    except Exception as exc:  # pydicom raises many types; all mean "cannot decode"
        reraise_if_interrupt(exc)
        raise DecodeError(f"{ts_label}: {summarise_exception(exc)}") from exc


def _decode_encapsulated(decoder: Decoder, ds: Dataset, ts_label: str) -> tuple[np.ndarray, dict[str, str | int], str]:
    plugins = order_plugins(decoder.available_plugins)
    if not plugins:
        missing = "; ".join(decoder.missing_dependencies) or "none registered"
        raise DecodeError(f"no decoding plugin available for {ts_label} ({missing})")

    failures: list[str] = []
    for plugin in plugins:
        try:
            arr, props = decoder.as_array(ds, index=0, decoding_plugin=plugin)
        except MemoryError:
            raise  # another plugin would need the same memory
        except Exception as exc:  # noqa: BLE001 - a failing plugin must not stop the next
            reraise_if_interrupt(exc)
            LOGGER.info("plugin %s failed on %s: %s", plugin, ts_label, exc)
            summary = summarise_exception(exc).removeprefix(f"{plugin}: ")
            failures.append(f"{plugin}: {summary}")
            continue
        return arr, props, plugin
    raise DecodeError(f"{ts_label} could not be decoded: " + " | ".join(failures))


def summarise_exception(exc: BaseException) -> str:
    """One short line from a pydicom exception (its multi-line text squeezed)."""
    text = " ".join(str(exc).split())
    prefix = "Unable to decode as exceptions were raised by all available plugins:"
    if text.startswith(prefix):
        text = text[len(prefix) :].strip()
    text = text or type(exc).__name__
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return text
