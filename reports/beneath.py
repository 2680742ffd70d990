"""Opening paths a worker received without following a link: the worker's last line of defence.

Stage: every file-system access of a worker (reading an input, publishing, the job
summary, cleaning staging folders). The API resolved and checked each path against
``CXR_DATA_ROOTS`` when it accepted the request, but the path is used later, by another
process, maybe on another host: in between, anyone who can write under the data roots
can swap a folder or a file for a symbolic link, and anyone who can reach Redis can send
a task naming any path. So a worker:

1. checks the path **lexically** against its *own* data roots (``check_under_roots``):
   it must be absolute and normalised (no ``.``/``..``/empty component, which is how the
   API sends it, resolved) and lie under one of the roots (resolved at start-up);
2. opens the root (a trusted, resolved path from its own configuration), then every
   further component relative to the previous one's descriptor with
   ``O_NOFOLLOW | O_DIRECTORY`` (``O_NOFOLLOW | O_NONBLOCK`` for the final file, so a
   FIFO cannot block it): a link anywhere below the root fails with ``ELOOP`` and
   becomes an ``outside_data_roots`` skip. Each step is relative to an open descriptor,
   so a link swapped in between two checks cannot redirect it; this is what
   ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` does in one call, and works on
   every kernel and in every container;
3. creates, replaces and deletes only relative to such descriptors (``mkdirat``,
   ``openat(O_EXCL | O_NOFOLLOW)``, ``renameat``, ``shutil.rmtree(dir_fd=...)``, which
   never descends through a link), so a link is at most removed itself, never followed.

Without data roots (``roots=None``: ``cxr infer``, run by the operator on paths they
chose) the path itself is opened as given, links included, and everything beneath it
goes through the same descriptor-relative calls.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path

from inference.errors import OutputError, OutsideDataRoots

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)


def check_under_roots(path: str | os.PathLike[str], roots: Sequence[Path], what: str) -> tuple[Path, list[str]]:
    """The data root ``path`` lies under and the components below it; else ``OutsideDataRoots``.

    ``what`` names the path in the detail ("the input file", "the output folder"); the
    detail never repeats the path (a record travels further than the operator's log).
    """
    text = os.fspath(path)
    if not os.path.isabs(text) or os.path.normpath(text) != text or "\x00" in text:
        raise OutsideDataRoots(f"{what} is not a normalised absolute path; refused")
    candidate = Path(text)
    for root in roots:
        if candidate == root or candidate.is_relative_to(root):
            return root, list(candidate.relative_to(root).parts)
    raise OutsideDataRoots(f"{what} is outside this worker's data roots (CXR_DATA_ROOTS); refused")


def open_dir(path: str | os.PathLike[str], roots: Sequence[Path] | None, what: str) -> int:
    """A descriptor of the folder ``path`` (module rule); the caller closes it."""
    if roots is None:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    root, parts = check_under_roots(path, roots, what)
    return _walk(root, parts, what, last_is_file=False)


def open_file(path: str | os.PathLike[str], roots: Sequence[Path] | None, what: str) -> int:
    """A read-only descriptor of the file ``path`` (module rule); the caller closes it.

    Opened ``O_NONBLOCK`` so that a FIFO does not block; whether it is a regular file is
    the reader's check.
    """
    if roots is None:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    root, parts = check_under_roots(path, roots, what)
    if not parts:
        raise OutsideDataRoots(f"{what} is a data root itself, not a file; refused")
    return _walk(root, parts, what, last_is_file=True)


def _walk(root: Path, parts: list[str], what: str, *, last_is_file: bool) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for position, part in enumerate(parts):
            flags = FILE_FLAGS if last_is_file and position == len(parts) - 1 else DIR_FLAGS
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _LINK_ERRNOS and is_link(fd, part):
                    raise OutsideDataRoots(
                        f"{what} passes through a symbolic link (changed after the request was checked): not followed"
                    ) from None
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_link(dir_fd: int, name: str) -> bool:
    """Whether ``name`` in the folder ``dir_fd`` is a symbolic link (not followed)."""
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_subdir(parent_fd: int, name: str, *, create: bool) -> int:
    """The engine's own folder ``name`` (``.tmp``, ``.locks``, ``.jobs``) under ``parent_fd``.

    Created when absent (``create``); a link in its place is an ``OutputError`` (never
    followed, never removed: the operator should see it); a file in its place is the
    ``OSError`` (``ENOTDIR``) it is, like any other unwritable output folder.
    """
    if create:
        try:
            os.mkdir(name, 0o777, dir_fd=parent_fd)
        except FileExistsError:
            pass
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS and is_link(parent_fd, name):
            raise OutputError(f"'{name}' in the output folder is a symbolic link: not followed") from None
        raise


def write_file_atomic(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` as ``name`` in the folder ``dir_fd``: a fresh temporary name
    (``O_EXCL | O_NOFOLLOW``), fsync'd, then renamed over ``name`` (a link of that name is
    replaced itself, never written through)."""
    temp = f".{name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
