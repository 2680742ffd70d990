"""Checking request bodies: field types, paths and the data roots.

Paths are server paths (shared storage). A path must be a non-empty absolute string
without NUL; it is resolved with ``os.path.realpath`` (symlinks included) and the
result must lie under one of ``CXR_DATA_ROOTS``; the *resolved* path is what the
engine then uses, so a symlink swapped in after the check cannot redirect it outside.
Existence is checked only after the roots, so the API never tells a client whether a
path outside its roots exists. A path longer than ``MAX_PATH_BYTES`` (4096 bytes of
UTF-8, Linux's ``PATH_MAX``) is refused before anything else looks at it: resolving a
1 MB path of many components cost the API 30 s of CPU, and no file system could hold
one anyway. A string that is not valid UTF-8 text (a lone surrogate
sent as ``"\\udcff"``) is an invalid path: it could not travel through Redis.

Fields the contract does not name are ignored (clients of the original API send
extras); JSON ``null`` counts as absent for the path fields and ``patient_id``, and is
refused like any other non-boolean for ``save_to_disk`` and ``wait``.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flask import current_app, request

from api.envelope import ApiError
from engine.discovery import is_utf8, within_roots
from reports.publish import LAYOUTS

#: DICOM LO (the PatientID VR) holds at most 64 characters.
MAX_PATIENT_ID_LENGTH = 64
#: The longest path field accepted, in bytes of UTF-8 (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096


def json_body() -> dict[str, Any]:
    """The request's JSON object, or 415 (any content type is parsed as JSON).

    Nesting deeper than the parser's recursion limit is 415 too (never a 500). A body
    over ``MAX_CONTENT_LENGTH`` is 413, also when it comes without a Content-Length
    (chunked): werkzeug would cut such a body at the limit without a word, and a body
    cut after its closing brace would then be taken as the whole request.
    """
    try:
        body = current_app.json.loads(read_body())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        body = None
    if not isinstance(body, dict):
        raise ApiError(415, "Request body must be a JSON object")
    return body


def read_body() -> bytes:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None or limit is None:
        return request.get_data(cache=True)  # werkzeug answers 413 over the limit
    if not request.environ.get("wsgi.input_terminated"):
        return b""  # no length and no end marker: werkzeug's rule, the body is empty
    stream, chunks, size = request.environ["wsgi.input"], [], 0
    while size <= limit:  # a server may hand out fewer bytes than asked for
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(bytes(chunk))
        size += len(chunk)
    if size > limit:
        raise ApiError(413, "Request body too large")
    return b"".join(chunks)


def require(body: dict[str, Any], field: str, message: str) -> Any:
    value = body.get(field)
    if value is None:
        raise ApiError(400, message)
    return value


def boolean_field(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"Invalid value for {field}, should be a boolean: {value!r}")
    return value


def layout_field(body: dict[str, Any]) -> str:
    value = body.get("layout", "patient")
    if value not in LAYOUTS:
        raise ApiError(400, f'Invalid value for layout, should be "patient" or "instance": {value!r}')
    return str(value)


def server_path(field: str, value: Any, roots: Sequence[Path]) -> Path:
    """The resolved path named by ``field``, checked against the data roots."""
    if isinstance(value, str) and path_too_long(value):
        raise ApiError(400, f"Invalid path {field}: longer than {MAX_PATH_BYTES} bytes")
    if (
        not isinstance(value, str)
        or not value.strip()
        or "\x00" in value
        or not os.path.isabs(value)
        or not is_utf8(value)
    ):
        raise ApiError(400, f"Invalid path {field}: {value!r}")
    resolved = Path(os.path.realpath(value))
    if not within_roots(resolved, roots):
        raise ApiError(400, f"Path is outside the allowed data roots: {value}")
    return resolved


def path_too_long(value: str) -> bool:
    """More than ``MAX_PATH_BYTES`` bytes of UTF-8 (a string of more characters than
    that is, without encoding it)."""
    return len(value) > MAX_PATH_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES


def path_exists(path: Path) -> bool:
    """``Path.exists`` that says False for a name too long for the file system (not 500)."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


def patient_id_field(body: dict[str, Any]) -> str | None:
    """An optional override: a non-blank string of printable characters, at most 64."""
    value = body.get("patient_id")
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_PATIENT_ID_LENGTH
        or any(unicodedata.category(ch).startswith("C") for ch in value)
    ):
        raise ApiError(400, f"Invalid patient_id: {value!r} in request body")
    return value.strip()


def make_output_folder(path: Path, shown: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise ApiError(500, f"Unable to create output folder: {shown}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ApiError(500, f"Unable to create output folder: {shown}")
