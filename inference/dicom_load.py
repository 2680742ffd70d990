"""Loading one file's header: parse, refuse what is not DICOM, find truncation.

The first part of the read stage (``inference.dicom_read``): a path (any extension,
any content) -> a pydicom ``Dataset`` whose large values stay on disk, or
``UnreadableDicom`` / ``UnsupportedImage``.

The header pass does not read large values: ``load_dataset`` parses with
``defer_size`` (``DEFER_BYTES``), so a defined-length value above 1 MiB, the native
(7FE0,0010) Pixel Data above all, stays on disk until the decoder asks for it. A
file whose header promises gigabytes (or which carries a huge private blob) is
refused having read only its small elements; checks use the *declared* length of
a deferred value, and a declared length that runs past the end of the file is
refused as truncated. Encapsulated (compressed) Pixel Data has an undefined length
and pydicom must scan it to find its end, so it is read during the header pass
(bounded by the file's size). ``stop_before_pixels`` would not do: it drops the
pixels the decoder needs, so every file would be parsed twice.

A Deflated Explicit VR Little Endian file is different: pydicom inflates the whole
dataset into memory before it parses anything (1.16 MB of deflated zeros became 1.97 GB).
``check_inflated_size`` first inflates it as a stream, keeping nothing, and refuses it as
``UnsupportedImage`` once it passes ``max_inflated_bytes`` (``inflate_limit``: one frame
of ``CXR_MAX_PIXELS`` values of 4 bytes, the most Bits Allocated allows, plus 16 MiB for
the other elements; a deflated file of many frames may exceed it and is refused). Only
then does pydicom inflate it, without ``defer_size``: its values are in memory already,
and a deferred value would be read again from the *compressed* file.
"""

from __future__ import annotations

import os
import stat
import zlib

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from inference.decode import resolve_transfer_syntax, summarise_exception
from inference.errors import (
    DecodeError,
    UnreadableDicom,
    UnsupportedImage,
    reraise_if_interrupt,
)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Defined-length values larger than this are left on disk by the header pass.
DEFER_BYTES = 1 << 20
#: ``ReadOptions.max_pixels`` by default (``CXR_MAX_PIXELS``): values of one frame.
DEFAULT_MAX_PIXELS = 100_000_000
#: Room for the non-pixel elements of a deflated dataset, on top of one frame.
INFLATE_HEADROOM = 16 << 20
_INFLATE_CHUNK = 1 << 20


def inflate_limit(max_pixels: int) -> int:
    """Bytes a deflated dataset may inflate to: ``max_pixels`` values of 4 bytes plus 16 MiB."""
    return 4 * max_pixels + INFLATE_HEADROOM


# --------------------------------------------------------------------------- load


def load_dataset(path: str | os.PathLike[str], max_inflated_bytes: int | None = None) -> Dataset:
    """Parse ``path`` as DICOM, refusing what cannot be an image object.

    Files without the 128-byte preamble / ``DICM`` are re-read with
    ``force=True`` and kept only if they hold (0008,0016) SOP Class UID,
    (0010,0020) Patient ID or (7FE0,0010) Pixel Data. Raises ``UnreadableDicom``
    (empty, not DICOM, truncated) or ``UnsupportedImage`` (DICOMDIR, a deflated
    dataset inflating past ``max_inflated_bytes``, by default
    ``inflate_limit(DEFAULT_MAX_PIXELS)``).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UnreadableDicom(f"cannot open file: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        # A FIFO would block the reader until the task's time limit.
        raise UnreadableDicom("not a regular file (a FIFO, socket, device or folder)")
    size = info.st_size
    if size == 0:
        raise UnreadableDicom("zero-length file")

    limit = inflate_limit(DEFAULT_MAX_PIXELS) if max_inflated_bytes is None else max_inflated_bytes
    defer = None if check_inflated_size(path, size, limit) else DEFER_BYTES
    forced = False
    try:
        ds = _parse(path, force=False, defer=defer)
    except InvalidDicomError:
        forced = True
        ds = _parse(path, force=True, defer=defer)

    if is_dicomdir(ds):
        raise UnsupportedImage(f"DICOMDIR (SOP Class {DICOMDIR_SOP_CLASS}) is a media index, not an image")
    if forced and not looks_like_dicom(ds):
        raise UnreadableDicom(
            "not DICOM: no preamble/'DICM' prefix and no (0008,0016) SOP Class UID, "
            "(0010,0020) Patient ID or (7FE0,0010) Pixel Data"
        )
    find_truncation(ds, size)
    if not looks_like_dicom(ds):
        raise UnreadableDicom(
            "no (0008,0016) SOP Class UID, (0010,0020) Patient ID or (7FE0,0010) "
            "Pixel Data could be read: file truncated or corrupt"
        )
    find_missing_pixel_data(ds)
    _convert_elements(ds)
    return ds


def check_inflated_size(path: str | os.PathLike[str], size: int, limit: int) -> bool:
    """True if ``path``'s File Meta names Deflated Explicit VR Little Endian; raises
    ``UnsupportedImage`` if its dataset inflates to more than ``limit`` bytes.

    Inflates as a stream (1 MiB at a time, nothing kept). A file whose meta pydicom
    cannot read, or a corrupt stream, is left to the full parse to report.
    """
    with open(path, "rb") as fp:
        try:
            read_preamble(fp, True)  # no 'DICM': back at byte 0, as dcmread(force=True)
            meta = _read_file_meta_info(fp)
            syntax = UID(str(meta.get("TransferSyntaxUID") or "").strip("\x00 "))
        except Exception as exc:  # noqa: BLE001 - arbitrary bytes; the full parse names the problem
            reraise_if_interrupt(exc)
            return False
        if syntax != DeflatedExplicitVRLittleEndian:
            return False
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = 0
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(_INFLATE_CHUNK)
            if not chunk:
                break  # a stream cut short: pydicom's inflate reports it
            try:
                inflated += len(inflater.decompress(chunk, _INFLATE_CHUNK))
            except zlib.error:
                break  # corrupt: pydicom's inflate reports it
            if inflated > limit:
                raise UnsupportedImage(
                    f"the deflated dataset ({size} bytes, Deflated Explicit VR Little Endian) inflates to more "
                    f"than {limit} bytes, the limit for one frame of CXR_MAX_PIXELS values: not inflated "
                    "(a decompression bomb)"
                )
    return True


def _parse(path: str | os.PathLike[str], force: bool, defer: int | None) -> Dataset:
    try:
        # A str path: pydicom re-opens it by name to read a deferred value.
        return pydicom.dcmread(os.fspath(path), force=force, defer_size=defer)
    except InvalidDicomError:
        if force:
            raise UnreadableDicom("not DICOM: pydicom cannot parse it even with force=True")
        raise
    except RecursionError as exc:
        # Sequences nested deeper than the interpreter's recursion limit (pydicom
        # parses each level recursively); the stack is unwound by now.
        raise UnreadableDicom("sequences nested too deeply to parse (Python recursion limit reached)") from exc
    except Exception as exc:  # the parser fails in many ways on arbitrary bytes
        reraise_if_interrupt(exc)
        raise UnreadableDicom(f"not parseable as DICOM ({type(exc).__name__}: {summarise_exception(exc)})") from exc


def is_deferred(ds: Dataset, tag: int) -> bool:
    """True if the value of top-level ``tag`` was left on disk by the header pass."""
    elem = ds.get_item(tag, keep_deferred=True)
    return isinstance(elem, RawDataElement) and elem.value is None and elem.length > 0


def declared_length(ds: Dataset, keyword: str) -> int | None:
    """Length in bytes of a top-level element's value without reading a deferred value:
    the declared length for a raw element, else the converted value's length; ``None``
    when absent or of undefined length."""
    if keyword not in ds:
        return None
    elem = ds.get_item(keyword, keep_deferred=True)
    if isinstance(elem, RawDataElement):
        if elem.length == _UNDEFINED_LENGTH:
            return None
        return elem.length if elem.value is None else len(elem.value)
    value = elem.value
    return len(value) if isinstance(value, (bytes, bytearray)) else None


def is_dicomdir(ds: Dataset) -> bool:
    """True for a DICOMDIR (media index) by SOP Class or Media Storage SOP Class."""
    file_meta = getattr(ds, "file_meta", None)
    media_class = file_meta.get("MediaStorageSOPClassUID") if file_meta is not None else None
    return DICOMDIR_SOP_CLASS in (
        str(media_class or ""),
        str(ds.get("SOPClassUID") or ""),
    )


def looks_like_dicom(ds: Dataset) -> bool:
    """True if ``ds`` holds any of SOP Class UID, Patient ID or Pixel Data."""
    return any(kw in ds for kw in ("SOPClassUID", "PatientID", "PixelData"))


def find_truncation(ds: Dataset, file_size: int) -> None:
    """Raise ``UnreadableDicom`` if pydicom silently read a truncated file.

    pydicom accepts a value cut short by end of file, and stops quietly when the
    file ends inside an element header. Checks the raw (not yet converted)
    top-level elements: a value shorter than its declared length (for a deferred
    value, one whose declared end lies past the end of the file), or, when no
    Pixel Data was read, 1-7 stray bytes after the last element.
    """
    last: tuple[int, RawDataElement] | None = None
    for elem in _top_level_elements(ds):
        if not isinstance(elem, RawDataElement):
            continue
        defined = elem.length != _UNDEFINED_LENGTH
        if defined and elem.value is not None and len(elem.value) < elem.length:
            raise UnreadableDicom(
                f"truncated: {_tag(elem.tag)} declares {elem.length} bytes, the file holds {len(elem.value)}"
            )
        if defined and elem.value is None and elem.value_tell + elem.length > file_size:
            raise UnreadableDicom(
                f"truncated: {_tag(elem.tag)} declares {elem.length} bytes, the file "
                f"holds {max(file_size - elem.value_tell, 0)}"
            )
        if last is None or elem.value_tell > last[0]:
            last = (elem.value_tell, elem)

    if "PixelData" in ds or last is None or _is_deflated(ds):
        return
    if any(isinstance(e, DataElement) and (e.file_tell or 0) > last[0] for e in _top_level_elements(ds)):
        return  # a sequence comes last; its end offset is not known
    elem = last[1]
    if elem.length == _UNDEFINED_LENGTH:
        return
    stray = file_size - (elem.value_tell + elem.length)
    if 0 < stray < 8:
        raise UnreadableDicom(f"truncated: file ends {stray} bytes into the element after {_tag(elem.tag)}")


def _top_level_elements(ds: Dataset) -> list[DataElement | RawDataElement]:
    """Like ``Dataset.elements()``, but a deferred value stays on disk."""
    return [ds.get_item(tag, keep_deferred=True) for tag in sorted(ds.keys())]


def find_missing_pixel_data(ds: Dataset) -> None:
    """Raise ``UnreadableDicom`` if an *Image Storage* SOP Class lacks Pixel Data.

    Pixel Data is the last element and mandatory in image objects, so its absence
    there means the file was cut at an element boundary (or written broken).
    Objects of other classes (reports, PDFs, plans) without pixels are left to
    ``check_eligibility``, which refuses them as ``UnsupportedImage``.
    """
    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if any(keyword in ds for keyword in pixel_keywords):
        return
    sop_class = UID(read_text(ds, "SOPClassUID"))
    if "Image Storage" in sop_class.name:
        raise UnreadableDicom(
            f"truncated or corrupt: (0008,0016) SOP Class {sop_class.name!r} requires "
            "(7FE0,0010) Pixel Data, which is absent"
        )


def _is_deflated(ds: Dataset) -> bool:
    try:
        return resolve_transfer_syntax(ds).is_deflated
    except DecodeError:
        return False


def _convert_elements(ds: Dataset) -> None:
    """Convert every top-level raw element now, so bad values fail here, once.

    Deferred values (over ``DEFER_BYTES``) stay on disk: converting one would read it.
    """
    for tag in list(ds.keys()):
        if is_deferred(ds, tag):
            continue
        try:
            ds[tag]
        except Exception as exc:  # value conversion of arbitrary bytes
            reraise_if_interrupt(exc)
            raise UnreadableDicom(f"element {_tag(tag)} cannot be parsed ({summarise_exception(exc)})") from exc


def _tag(tag: int) -> str:
    """``(7FE0,0010) PixelData`` style label for error details."""
    label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    keyword = keyword_for_tag(tag)
    return f"{label} {keyword}" if keyword else label


def read_text(ds: Dataset, keyword: str) -> str:
    """Element value as a stripped string; multiple values joined with ``\\``."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()
