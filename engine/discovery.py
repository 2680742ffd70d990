"""Which files of a folder are DICOM inputs (names only: cheap enough for the API).

Kept apart from the pipeline so that the API can list a folder without importing
NumPy, OpenCV or the report code.

``discover_inputs`` is what ``POST /bulk_inference`` uses; it knows the data roots
(``CXR_DATA_ROOTS``) and applies the symbolic-link policy:

* Every file whose name ends in ``.dcm`` (any case) is an input, recursively; folders
  whose names start with a dot are not entered (``.tmp``, ``.jobs`` and ``.locks`` of
  an output folder, ``.git``, OS metadata).
* A symbolic link (to a file or to a folder) is resolved. If its target lies outside
  every data root it is **not followed**: the link itself is listed as skipped with
  reason ``outside_data_roots`` (the detail never says whether the target exists). A
  link to a file inside the roots is an input under its *resolved* path (so a link
  swapped after discovery cannot redirect the worker); a link to a folder inside the
  roots is entered like a folder.
* Every folder is entered at most once (by device and inode), so a link to a parent
  folder, or two links to one folder, cannot make discovery loop or list a file twice;
  a file reached twice (itself and a link to it) is one input.
* A ``.dcm`` name that is not a regular file (a FIFO, a socket, a device, a dangling
  link) is listed as skipped (``unreadable_dicom``): reading a FIFO would block a
  worker. So is a path that is not valid UTF-8 (it could not travel through the job
  record); the summary shows it with the bad bytes escaped.

The walk is iterative (no recursion limit on folder depth). It is a snapshot: a link
created after it is not seen.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference.errors import CxrError, OutsideDataRoots, UnreadableDicom

log = logging.getLogger(__name__)

_TakeFile = Callable[[str, str], None]  # (resolved path, path as listed)
_Refuse = Callable[[str, CxrError], None]

DICOM_SUFFIX = ".dcm"


@dataclass
class Discovery:
    """The inputs of a bulk job: ``files`` to process (resolved paths, sorted, unique)
    and ``refused`` skip records (``path``, ``reason``, ``detail``, sorted by path)."""

    files: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.files) + len(self.refused)


def parse_data_roots(text: str) -> list[Path]:
    """``CXR_DATA_ROOTS``: ``os.pathsep``-separated folders, resolved (symlinks included).

    Empty: the current directory (development; production refuses to start, in the API
    (``api.config``) and in the workers (``engine.settings``) alike). The API and the
    workers both parse the variable here, so they agree on what it means.
    """
    parts = [p for p in str(text).split(os.pathsep) if p.strip()] or [os.getcwd()]
    return [Path(os.path.realpath(p.strip())) for p in parts]


def within_roots(path: Path, roots: Sequence[Path]) -> bool:
    """True if ``path`` (already resolved) is one of ``roots`` or lies under one."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def shown_path(path: str) -> str:
    """``path`` as valid UTF-8 text: undecodable bytes (surrogate escapes) as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def discover_inputs(folder: Path, roots: Sequence[Path]) -> Discovery:
    """Apply the module's policy to ``folder`` (resolved, inside ``roots``)."""
    found = Discovery()
    files: set[str] = set()
    resolved_roots = [Path(os.path.realpath(r)) for r in roots]

    def refuse(path: str, error: CxrError) -> None:
        found.refused.append(error.as_skip(shown_path(path)))

    def take_file(path: str, shown: str) -> None:
        """``path`` is resolved; ``shown`` is the name the folder listing gave."""
        if not is_utf8(path):
            refuse(shown, UnreadableDicom("the path is not valid UTF-8; rename the file"))
            return
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            refuse(shown, UnreadableDicom(f"cannot open file: {exc.strerror or exc}"))
            return
        if not stat.S_ISREG(mode):
            refuse(shown, UnreadableDicom(f"not a regular file ({_file_kind(mode)})"))
            return
        files.add(path)

    root = Path(os.path.realpath(folder))
    if root.is_file():
        take_file(str(root), str(root))
        found.files = sorted(files)
        return found

    visited: set[tuple[int, int]] = set()
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            log.warning("folder %s cannot be listed: %s", shown_path(directory), exc.strerror)
            refuse(directory, UnreadableDicom(f"folder cannot be listed: {exc.strerror or exc}"))
            continue
        for entry in entries:
            pending.extend(_classify(entry, resolved_roots, take_file, refuse))

    found.files = sorted(files)
    found.refused.sort(key=lambda r: r["path"])
    return found


def _classify(entry: os.DirEntry[str], roots: Sequence[Path], take_file: _TakeFile, refuse: _Refuse) -> Iterator[str]:
    """Yield the folder to enter for ``entry`` (if any); hand files and refusals on."""
    name = entry.name
    is_link = entry.is_symlink()
    if not is_link:
        if entry.is_dir(follow_symlinks=False):
            if not name.startswith("."):
                yield entry.path
        elif name.lower().endswith(DICOM_SUFFIX):
            take_file(entry.path, entry.path)
        return

    target = Path(os.path.realpath(entry.path))
    is_dir = target.is_dir()
    if (is_dir and name.startswith(".")) or (not is_dir and not name.lower().endswith(DICOM_SUFFIX)):
        return
    if not within_roots(target, roots):
        kind = "folder" if is_dir else "file"
        refuse(
            entry.path,
            OutsideDataRoots(f"symbolic link to a {kind} outside the data roots (CXR_DATA_ROOTS): not followed"),
        )
        return
    if is_dir:
        yield str(target)
    else:
        take_file(str(target), entry.path)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return kind
    return "special file"


def iter_dicom_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (recursively) whose name ends in ``.dcm``, any case, sorted.

    For ``cxr infer`` (no data roots): folders whose names start with a dot are not
    entered; symbolic links to folders are not entered (``os.walk``); symbolic links to
    files are listed like files. The service uses ``discover_inputs``.
    """
    if root.is_file():
        yield root
        return
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(DICOM_SUFFIX))
    yield from sorted(found)
