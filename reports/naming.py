"""Folder and file names derived from untrusted DICOM values, and joins that cannot escape.

Stage: naming. Inputs: raw strings from the DICOM header or the request (patient id,
SOP instance UID). Outputs: one path component that is safe on Linux (and on the SMB/NFS
shares an output folder often lives on), plus ``safe_join`` which refuses any path that
would land outside the output root.

The sanitiser rule (``sanitize_patient_id``), precisely:

1. ``n = NFC(raw)``.
2. Each code point of ``n``:

   * dropped: control characters (Unicode category ``Cc``: NUL, TAB, CR, LF, DEL, ...)
     and invisible format characters (``Cf``: zero-width joiners, bidi overrides, BOM),
     which would otherwise make two names look the same or spoof their reading order;
   * kept: letters (``L*``), combining marks (``M*``, needed by Indic, Thai and Arabic
     names), decimal digits (``Nd``) and the ASCII characters ``-``, ``_`` and ``.``;
   * replaced by ``_``: everything else (space and other separators, ``/``, ``\\``,
     ``:``, other punctuation, symbols, emoji, private-use, unassigned code points, lone
     surrogates). A replacement ``_`` is not emitted when the output already ends in
     ``_``, so a run of unsafe characters becomes a single ``_``.

3. Leading ``.``, ``_`` and ``-`` are stripped (no hidden folder, no ``.``/``..``, nothing
   a shell tool could take for an option) and trailing ``.`` are stripped (Windows/SMB
   silently drop them). Call the result *base*.
4. If ``base == n``, it is 1..64 characters and at most 128 UTF-8 bytes, and it is not a
   Windows device name (``CON``, ``NUL``, ``COM1``...), the id was already safe and is
   returned **unchanged** (``"PAT-00123"`` -> ``"PAT-00123"``).
5. Otherwise the name is ``base`` (``"id"`` when empty), cut so that the whole name fits
   64 characters and 128 UTF-8 bytes, then ``"~"`` and the first 8 hex digits of
   ``sha256(n)`` (UTF-8, lone surrogates passed through): ``"a/b"`` -> ``"a_b~<8 hex>"``.

Why ``~`` as the marker: it is the one character outside the kept set that may appear in
an output, and it appears only in step 5. So an unchanged name never contains ``~``, a
hashed name always ends in ``~`` + 8 hex, and the two kinds never collide. Two different
raw ids that both need a hash collide only if their bases match *and* the 32-bit hash
prefixes match (accidental probability 2**-32 per pair). Ids that differ only by Unicode
normalisation (NFD vs NFC "Müller") are the same id and get the same folder. Case is
preserved: on a case-insensitive share ``pat1`` and ``PAT1`` would share a folder.

The sanitiser is deterministic but not idempotent on hashed names (``~`` is itself
replaced), so sanitise the raw id exactly once.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

MAX_NAME_CHARS = 64
MAX_NAME_BYTES = 128
HASH_MARKER = "~"
HASH_HEX_DIGITS = 8

_KEPT_ASCII = frozenset("-_.")
_STRIP_LEADING = "._-"
_STRIP_TRAILING = "."
_WINDOWS_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)


class UnsafePathError(ValueError):
    """A joined path would resolve outside its root (or to the root itself)."""


def sanitize_patient_id(raw: str) -> str:
    """Return a folder-name-safe, non-empty name for the patient id ``raw``.

    Input: any ``str`` (may be empty, contain separators, NUL, emoji, lone surrogates).
    Output: a name with no path separator, no NUL or control character, no leading dot,
    never ``.``/``..``/empty, at most 64 characters and 128 UTF-8 bytes. Safe ids are
    returned unchanged; any other id gets a ``~`` + 8-hex hash suffix (module docstring).
    """
    return _sanitize_component(raw, placeholder="id")


def sanitize_uid_component(uid: str) -> str:
    """Return a folder-name-safe name for a SOP instance UID (``layout: "instance"``).

    Input: the UID as read from (0008,0018); DICOM pads UI values with NUL or space, so
    trailing NUL/whitespace is removed first. A well-formed UID (digits and dots, at
    most 64 characters) is returned unchanged; anything else follows the patient-id rule
    with ``"uid"`` as the placeholder for an empty base.
    """
    return _sanitize_component(uid.rstrip("\x00 \t\r\n"), placeholder="uid")


def safe_join(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and return the resolved path.

    Inputs: ``root`` (need not exist yet), path components. Symlinks are resolved for
    both the root and the result. Output: the resolved path, guaranteed to be strictly
    inside the resolved root. Raises ``UnsafePathError`` when the result is the root
    itself or outside it (``..``, absolute components, a symlink pointing out), or when
    a component is empty or holds a NUL byte.

    The check is a snapshot: a symlink created inside ``root`` after this call is not
    seen. Callers that write must hold the output root against untrusted writers.
    """
    for part in parts:
        if not part or "\x00" in part:
            raise UnsafePathError(f"invalid path component: {part!r}")
    root_resolved = Path(root).resolve()
    candidate = root_resolved.joinpath(*parts).resolve()
    if candidate == root_resolved or root_resolved not in candidate.parents:
        raise UnsafePathError(
            f"path {'/'.join(parts)!r} resolves to {str(candidate)!r}, not inside {str(root_resolved)!r}"
        )
    return candidate


def short_hash(text: str) -> str:
    """First 8 hex digits of sha256 of ``text`` (UTF-8; lone surrogates passed through)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:HASH_HEX_DIGITS]


def _sanitize_component(raw: str, *, placeholder: str) -> str:
    """Apply the module rule to ``raw``; ``placeholder`` stands in for an empty base."""
    normalized = unicodedata.normalize("NFC", raw)
    base = _strip_edges(_map_characters(normalized))
    if base == normalized and _fits(base) and not _is_device_name(base):
        return base
    suffix = HASH_MARKER + short_hash(normalized)
    stem = _truncate(base or placeholder, MAX_NAME_CHARS - len(suffix), MAX_NAME_BYTES - len(suffix))
    stem = stem.rstrip(_STRIP_TRAILING) or placeholder
    return stem + suffix


def _map_characters(text: str) -> str:
    """Step 2: drop controls/format characters, keep the safe set, replace the rest."""
    out: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf"):
            continue
        if char in _KEPT_ASCII or category[0] in ("L", "M") or category == "Nd":
            out.append(char)
        elif not out or out[-1] != "_":
            out.append("_")
    return "".join(out)


def _strip_edges(text: str) -> str:
    """Step 3: no leading ``.``/``_``/``-``, no trailing ``.``."""
    return text.lstrip(_STRIP_LEADING).rstrip(_STRIP_TRAILING)


def _fits(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME_CHARS and len(name.encode("utf-8")) <= MAX_NAME_BYTES


def _is_device_name(name: str) -> bool:
    return name.split(".", 1)[0].upper() in _WINDOWS_DEVICE_NAMES


def _truncate(text: str, max_chars: int, max_bytes: int) -> str:
    """Longest prefix of ``text`` within both limits (never splits a code point)."""
    text = text[:max_chars]
    while len(text.encode("utf-8")) > max_bytes:
        text = text[:-1]
    return text
