"""Atomic publication of one image's artifacts into its output folder.

Stage: publication. Inputs: the output root, the already-sanitised folder names, the
artifact bytes by file name, the image's job id, rank and model, and (in a worker) the
data roots. Output: a ``PublishOutcome`` saying whether this image now owns the folder.

Ownership: the engine replaces only folders it made itself. Every folder it publishes
holds a marker file, ``.cxr-engine`` (JSON: ``engine``, ``kind``, ``layout``,
``job_id``, ``rank``, ``model``), written with the artifacts before the folder appears.
Before any swap or delete the name is inspected without following links:

* nothing there: the folder is created;
* a folder with a marker of the same layout: the rank rule below decides;
* anything else is a conflict, an ``OutputError`` naming it (``output_error`` skip),
  and nothing is touched: a file (files are never replaced by folders), a symbolic link,
  a folder without a marker (a client's own folder), a marker that cannot be read, a
  folder of the other layout.

A folder published before markers existed is recognised by its content: exactly the
four artifact files of that name and nothing else, the predictions JSON carrying a
``publication`` rank. Losing such a folder loses only an earlier engine output.

The rule that decides which image owns a folder, the same within a job and across jobs
(``single_inference`` requests included, each its own job):

* The image with the greatest ``rank`` wins. The caller computes rank as
  ``[acquisition datetime, SOP instance UID, source path]`` (strings, compared as Python
  lists), so the folder ends up holding the patient's most recent image whatever the
  order in which workers, or jobs, finish. An image whose rank is lower than the
  folder's current rank (read from its marker) is ``"superseded"`` and the folder is
  left untouched. An equal rank is the same source file published again (a retried
  task, a re-run with a newer model), and replaces the folder.
* ``layout: "instance"`` gives every image its own folder ``<patient>/<uid>/`` under a
  container folder that carries a marker of kind ``container``; the same rule applies to
  each ``<uid>`` folder (two files with one UID: the greater rank stays).

How a folder is replaced, so that readers see the old set or the new set, never a mix:

1. every file, the marker included, is written and fsync'd into a fresh
   ``<root>/.tmp/<job_id>.<uuid>/``, on the same file system as the target (the
   dot-folder is never taken for a patient folder); what a killed writer leaves there is
   removed when its job finishes (``remove_job_temp_dirs``) or, for anything else, after
   an hour (``remove_stale_temp_dirs``);
2. an exclusive ``flock`` on ``<root>/.locks/<sha256 of the relative target>.lock``
   serialises all publishers of that folder, across processes and hosts sharing the
   lock semantics (local file systems; NFSv4 maps flock to byte-range locks);
3. under the lock the ownership check and the rank rule are applied; the winner swaps
   the temp dir into place with ``renameat2(RENAME_EXCHANGE)`` (one atomic step; the old
   folder ends up at the temp path, is checked to be the very folder inspected, and is
   removed), or with ``renameat2(RENAME_NOREPLACE)`` when there is no target yet;
4. the parent directory is fsync'd.

Every step goes through directory descriptors (``reports.beneath``): the root is opened
under the data roots without following links, and nothing below it is ever followed.
Where ``renameat2`` is unavailable (``ENOSYS``: old kernel or libc; ``EINVAL``: a file
system without the flag) the fallback renames the old folder aside and then renames the
new one in: a reader may briefly find the folder absent, but never mixed.
Lock files are never deleted (deleting a lock another process waits on breaks mutual
exclusion); there is one small file per folder ever published.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inference.errors import OutputError
from reports.beneath import DIR_FLAGS, FILE_FLAGS, is_link, open_dir, open_subdir
from reports.naming import UnsafePathError

TEMP_DIR_NAME = ".tmp"
LOCK_DIR_NAME = ".locks"
MARKER_NAME = ".cxr-engine"
MARKER_ENGINE = "cxr-engine"
MAX_MARKER_BYTES = 64 * 1024
MAX_LEGACY_PREDICTIONS_BYTES = 16 * 1024 * 1024
LAYOUTS = ("patient", "instance")
ARTIFACT_SUFFIXES: dict[str, str] = {
    "predictions": "_predictions.json",
    "heatmap": "_heatmap.png",
    "source_image": "_source_image.png",
    "report": "_report.pdf",
}
PREDICTIONS_SUFFIX = ARTIFACT_SUFFIXES["predictions"]

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2

PublishStatus = Literal["published", "superseded"]
#: ``renameat2(src_dir_fd, src_name, dst_dir_fd, dst_name, flags)``
RenameAt2 = Callable[[int, str, int, str, int], None]


@dataclass(frozen=True)
class PublishOutcome:
    """``status``: "published" (this image owns ``folder``) or "superseded" (it lost
    and nothing was written); ``files``: artifact name -> final path (as it would be
    when superseded); ``owner``: the folder's marker after the call (this image's when
    published, the keeper's when superseded)."""

    status: PublishStatus
    folder: Path
    files: dict[str, Path]
    owner: dict[str, Any] | None = None


def artifact_names(patient_folder: str) -> dict[str, str]:
    """Artifact kind -> file name, as in API.md "Output layout".

    ``{"predictions": "<p>_predictions.json", "heatmap": "<p>_heatmap.png",
    "source_image": "<p>_source_image.png", "report": "<p>_report.pdf"}``.
    """
    return {kind: patient_folder + suffix for kind, suffix in ARTIFACT_SUFFIXES.items()}


def image_marker(*, job_id: str, rank: list[str], layout: str, model: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``.cxr-engine`` content of an image's folder."""
    return {
        "engine": MARKER_ENGINE,
        "kind": "image",
        "layout": layout,
        "job_id": job_id,
        "rank": list(rank),
        "model": dict(model or {}),
    }


def publish_artifacts(
    output_root: Path,
    folder_parts: list[str],
    files: dict[str, bytes],
    *,
    job_id: str,
    rank: list[str],
    layout: str,
    model: Mapping[str, Any] | None = None,
    data_roots: Sequence[Path] | None = None,
) -> PublishOutcome:
    """Publish ``files`` as the folder ``output_root/<folder_parts...>`` (module rule).

    Inputs: ``output_root``, an existing directory (under ``data_roots`` when given, and
    then reached without following any link); ``folder_parts``, sanitised names
    (``[patient]`` for layout "patient", ``[patient, uid]`` for "instance"), none of
    which may start with a dot; ``files``, plain file name -> bytes; ``job_id``,
    ``rank`` and ``model`` as written in the marker.
    Output: ``PublishOutcome``. Raises ``UnsafePathError`` for a folder part or file
    name that is not one plain name, ``ValueError`` for an unknown layout,
    ``OutputError`` for a name taken by something the engine did not make,
    ``OutsideDataRoots`` for an output root outside the data roots or reached through a
    link, and ``OSError`` from the file system; the temp dir never outlives the call.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not isinstance(rank, list) or not all(isinstance(item, str) for item in rank):
        raise ValueError(f"rank must be a list of strings, got {rank!r}")
    _check_folder_parts(folder_parts, layout)
    for name in files:
        _check_file_name(name)
    root = Path(output_root) if data_roots is not None else Path(output_root).resolve(strict=True)
    target = root.joinpath(*folder_parts)
    final_paths = {name: target / name for name in files}
    marker = image_marker(job_id=job_id, rank=rank, layout=layout, model=model)
    with (
        _closing(open_dir(root, data_roots, "the output folder")) as root_fd,
        _closing(open_subdir(root_fd, TEMP_DIR_NAME, create=True)) as temp_fd,
    ):
        staging = _write_staging_dir(temp_fd, files, marker, job_id)
        try:
            with _closing(_parent_fd(root_fd, folder_parts, layout)) as parent_fd:
                name, shown = folder_parts[-1], "/".join(folder_parts)
                with _folder_lock(root_fd, folder_parts):
                    owner = inspect_folder(parent_fd, name, shown, layout, artifact_base=folder_parts[0])
                    if owner is not None and _outranks(owner, rank):
                        return PublishOutcome("superseded", target, final_paths, owner)
                    _swap_into_place(temp_fd, staging, parent_fd, name, owner, shown, folder_parts[0], layout)
                    os.fsync(parent_fd)
        finally:
            remove_entry(temp_fd, staging)
    return PublishOutcome("published", target, final_paths, marker)


def folder_owners(
    output_root: Path, folders: Iterable[str], data_roots: Sequence[Path] | None = None
) -> dict[str, dict[str, Any] | None]:
    """What each published folder holds now: folder path -> its marker, or None when the
    folder is gone, unreadable or no longer an engine folder (for the job summary).

    ``folders`` are paths as ``PublishOutcome.folder`` gave them (under ``output_root``).
    """
    wanted = list(dict.fromkeys(folders))
    owners: dict[str, dict[str, Any] | None] = dict.fromkeys(wanted)
    root = Path(output_root) if data_roots is not None else Path(output_root).resolve()
    try:
        root_fd = open_dir(root, data_roots, "the output folder")
    except Exception:  # noqa: BLE001 - gone or refused: nothing can be said about any folder
        return owners
    with _closing(root_fd):
        for folder in wanted:
            try:
                parts = list(Path(folder).relative_to(root).parts)
            except ValueError:
                continue
            if not parts:
                continue
            try:
                with _closing(_walk_nofollow(root_fd, parts[:-1])) as parent_fd:
                    layout = "instance" if len(parts) > 1 else "patient"
                    owners[folder] = inspect_folder(parent_fd, parts[-1], "/".join(parts), layout, parts[0])
            except (OSError, OutputError):
                continue
    return owners


def remove_stale_temp_dirs(
    output_root: Path, older_than_s: float = 3600.0, data_roots: Sequence[Path] | None = None
) -> list[Path]:
    """Delete ``<root>/.tmp/*`` entries older than ``older_than_s`` (left by crashes).

    Returns what was removed. A live publisher's staging dir is minutes old at most, so
    the default hour never touches one. A ``.tmp`` that is a link is left alone (and
    reported as an ``OutputError``); entries are removed through the folder's
    descriptor, so a link inside is removed itself, never followed.
    """
    cutoff = time.time() - older_than_s
    return _clean_temp(output_root, data_roots, lambda name, info: info.st_mtime < cutoff)


def remove_job_temp_dirs(output_root: Path, job_id: str, data_roots: Sequence[Path] | None = None) -> list[Path]:
    """Delete the staging folders of ``job_id`` (``<root>/.tmp/<job_id>.*``).

    Call it only once every task of the job has ended (its chord callback): then such a
    folder can only be the leftover of a writer that was killed mid-publish.
    """
    if not _staging_prefix_ok(job_id):
        return []
    return _clean_temp(output_root, data_roots, lambda name, info: name.startswith(f"{job_id}."))


def _clean_temp(
    output_root: Path, data_roots: Sequence[Path] | None, doomed: Callable[[str, os.stat_result], bool]
) -> list[Path]:
    root = Path(output_root)
    with _closing(open_dir(root, data_roots, "the output folder")) as root_fd:
        try:
            temp_fd = os.open(TEMP_DIR_NAME, DIR_FLAGS, dir_fd=root_fd)
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and is_link(root_fd, TEMP_DIR_NAME):
                raise OutputError(f"'{TEMP_DIR_NAME}' in the output folder is a symbolic link: not followed") from None
            raise
        removed: list[Path] = []
        with _closing(temp_fd):
            for name in sorted(os.listdir(temp_fd)):
                try:
                    info = os.stat(name, dir_fd=temp_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if doomed(name, info):
                    remove_entry(temp_fd, name)
                    removed.append(root / TEMP_DIR_NAME / name)
        return removed


def _staging_prefix_ok(job_id: str) -> bool:
    return bool(job_id) and all(c.isalnum() or c in "-_" for c in job_id)


def _check_folder_parts(folder_parts: Sequence[str], layout: str) -> None:
    """One plain, visible name per part: no dot first, no separator, no NUL."""
    if not folder_parts:
        raise UnsafePathError("no folder name given")
    for part in folder_parts:
        if not part or part.startswith(".") or "/" in part or "\\" in part or "\x00" in part:
            raise UnsafePathError(f"unsafe folder name: {part!r}")
    if len(folder_parts) != (2 if layout == "instance" else 1):
        raise UnsafePathError(f"layout {layout!r} takes {2 if layout == 'instance' else 1} folder name(s)")


def _check_file_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
        raise UnsafePathError(f"unsafe artifact file name: {name!r}")


@contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _walk_nofollow(root_fd: int, parts: Sequence[str]) -> int:
    """A descriptor of ``parts`` below ``root_fd``, no link followed (``ELOOP`` otherwise)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_staging_dir(temp_fd: int, files: Mapping[str, bytes], marker: Mapping[str, Any], job_id: str) -> str:
    """Write every file and the marker (fsync'd) into a fresh ``.tmp/<job_id>.<uuid>``; return its name."""
    prefix = f"{job_id}." if _staging_prefix_ok(job_id) else ""
    staging = f"{prefix}{uuid.uuid4().hex}"
    os.mkdir(staging, 0o777, dir_fd=temp_fd)
    try:
        with _closing(os.open(staging, DIR_FLAGS, dir_fd=temp_fd)) as staging_fd:
            for name, data in files.items():
                _write_file(staging_fd, name, data)
            _write_file(staging_fd, MARKER_NAME, _marker_bytes(marker))
            os.fsync(staging_fd)
    except BaseException:
        remove_entry(temp_fd, staging)
        raise
    return staging


def _marker_bytes(marker: Mapping[str, Any]) -> bytes:
    return (json.dumps(marker, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def _parent_fd(root_fd: int, folder_parts: Sequence[str], layout: str) -> int:
    """The folder that holds the target: the root, or (layout "instance") the patient's
    container, created with its marker under the container's lock when absent."""
    if layout != "instance":
        return os.dup(root_fd)
    container = folder_parts[0]
    with _folder_lock(root_fd, [container]):
        owner = inspect_folder(root_fd, container, container, "container", artifact_base=container)
        if owner is None:
            try:
                os.mkdir(container, 0o777, dir_fd=root_fd)
            except FileExistsError:  # not one of ours (we hold its lock): inspect says what it is
                inspect_folder(root_fd, container, container, "container", artifact_base=container)
                raise OutputError(
                    f"'{container}' appeared in the output folder while publishing: not replaced"
                ) from None
            fd = os.open(container, DIR_FLAGS, dir_fd=root_fd)
            _write_file(fd, MARKER_NAME, _marker_bytes({"engine": MARKER_ENGINE, "kind": "container"}))
            os.fsync(fd)
            os.fsync(root_fd)
            return fd
        fd = os.open(container, DIR_FLAGS, dir_fd=root_fd)
        if owner.get("legacy"):  # adopt a pre-marker container once its content was checked
            try:
                _write_file(fd, MARKER_NAME, _marker_bytes({"engine": MARKER_ENGINE, "kind": "container"}))
            except FileExistsError:
                pass
        return fd


@contextmanager
def _folder_lock(root_fd: int, folder_parts: Sequence[str]) -> Iterator[None]:
    """Hold an exclusive flock dedicated to ``folder_parts`` for the duration of the block."""
    key = hashlib.sha256("/".join(folder_parts).encode("utf-8", "surrogatepass")).hexdigest()
    with _closing(open_subdir(root_fd, LOCK_DIR_NAME, create=True)) as lock_dir_fd:
        fd = os.open(f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=lock_dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _outranks(owner: Mapping[str, Any], rank: Sequence[str]) -> bool:
    """True when the folder's current image has a greater rank than ``rank``."""
    existing = owner.get("rank")
    if not isinstance(existing, list) or not all(isinstance(item, str) for item in existing):
        return False
    return existing > list(rank)


def inspect_folder(parent_fd: int, name: str, shown: str, layout: str, artifact_base: str) -> dict[str, Any] | None:
    """What ``name`` under ``parent_fd`` is, without following a link.

    Returns None when nothing has that name, the folder's marker when it is an engine
    folder of ``layout`` (``"patient"``, ``"instance"`` for a ``<uid>`` folder, or
    ``"container"``); raises ``OutputError`` naming ``shown`` for anything else.
    """
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"'{shown}' in the output folder is a symbolic link: not followed, not replaced")
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"'{shown}' in the output folder is a file, not a folder made by the engine: not replaced")
    try:
        folder_fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    with _closing(folder_fd):
        marker = _read_marker(folder_fd, shown)
        if marker is None:
            marker = _legacy_marker(folder_fd, layout, artifact_base)
        if marker is None:
            raise OutputError(
                f"'{shown}' in the output folder is a folder the engine did not make "
                f"(no {MARKER_NAME} marker): not replaced"
            )
    kind = "container" if layout == "container" else "image"
    if marker.get("kind") != kind or (kind == "image" and marker.get("layout") != layout):
        found = (
            "instance-layout folders" if marker.get("kind") == "container" else f"{marker.get('layout')}-layout output"
        )
        wanted = "instance-layout folders" if kind == "container" else f"{layout}-layout output"
        raise OutputError(f"'{shown}' in the output folder holds the engine's {found}, not {wanted}: not replaced")
    return marker


def _read_marker(folder_fd: int, shown: str) -> dict[str, Any] | None:
    """The folder's ``.cxr-engine`` content; None when there is none; ``OutputError`` when it is unusable."""
    try:
        fd = os.open(MARKER_NAME, FILE_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError:
        raise OutputError(f"'{shown}/{MARKER_NAME}' in the output folder cannot be read: not replaced") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OutputError(f"'{shown}/{MARKER_NAME}' in the output folder is not a file: not replaced")
        data = handle.read(MAX_MARKER_BYTES + 1)
    try:
        marker = json.loads(data) if len(data) <= MAX_MARKER_BYTES else None
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or marker.get("engine") != MARKER_ENGINE:
        raise OutputError(f"'{shown}/{MARKER_NAME}' in the output folder is not the engine's marker: not replaced")
    return marker


def _legacy_marker(folder_fd: int, layout: str, artifact_base: str) -> dict[str, Any] | None:
    """A marker for a folder published before markers existed (module docstring), else None."""
    entries = os.listdir(folder_fd)
    if layout == "container":
        if not entries:
            return None
        for entry in entries:
            try:
                inspect_folder(folder_fd, entry, entry, "instance", artifact_base)
            except (OutputError, OSError):
                return None
        return {"engine": MARKER_ENGINE, "kind": "container", "legacy": True}
    names = artifact_names(artifact_base)
    if sorted(entries) != sorted(names.values()):
        return None
    try:
        fd = os.open(names["predictions"], FILE_FLAGS, dir_fd=folder_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(MAX_LEGACY_PREDICTIONS_BYTES + 1)
    try:
        document = json.loads(data)
    except ValueError:
        return None
    publication = document.get("publication") if isinstance(document, dict) else None
    if not isinstance(publication, dict):
        return None
    rank = publication.get("rank")
    if not isinstance(rank, list) or not all(isinstance(item, str) for item in rank):
        return None
    return {
        "engine": MARKER_ENGINE,
        "kind": "image",
        "layout": layout,
        "job_id": publication.get("job_id"),
        "rank": rank,
        "model": document.get("model", {}),
        "legacy": True,
    }


def _swap_into_place(
    temp_fd: int,
    staging: str,
    parent_fd: int,
    name: str,
    owner: Mapping[str, Any] | None,
    shown: str,
    artifact_base: str,
    layout: str,
) -> None:
    """Make ``staging`` appear as ``name``; the old folder (``owner``'s, if any) ends at
    ``staging`` and is removed there, once checked to be the folder that was inspected."""
    renameat2 = _renameat2()
    if owner is None:
        try:
            if renameat2 is None:
                raise OSError(errno.ENOSYS, "no renameat2")
            renameat2(temp_fd, staging, parent_fd, name, _RENAME_NOREPLACE)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise OutputError(f"'{shown}' appeared in the output folder while publishing: not replaced") from None
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
            os.rename(staging, name, src_dir_fd=temp_fd, dst_dir_fd=parent_fd)
        return
    if renameat2 is not None:
        try:
            renameat2(temp_fd, staging, parent_fd, name, _RENAME_EXCHANGE)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
        else:
            if not _displaced_is(temp_fd, staging, owner, artifact_base, layout):
                renameat2(temp_fd, staging, parent_fd, name, _RENAME_EXCHANGE)  # put it back
                raise OutputError(f"'{shown}' in the output folder changed while publishing: not replaced")
            remove_entry(temp_fd, staging)
            return
    aside = staging + ".old"
    os.rename(name, aside, src_dir_fd=parent_fd, dst_dir_fd=temp_fd)  # the folder is absent until the next rename
    if not _displaced_is(temp_fd, aside, owner, artifact_base, layout):
        os.rename(aside, name, src_dir_fd=temp_fd, dst_dir_fd=parent_fd)
        raise OutputError(f"'{shown}' in the output folder changed while publishing: not replaced")
    os.rename(staging, name, src_dir_fd=temp_fd, dst_dir_fd=parent_fd)
    remove_entry(temp_fd, aside)


def _displaced_is(temp_fd: int, name: str, owner: Mapping[str, Any], artifact_base: str, layout: str) -> bool:
    """Whether what was just moved to ``.tmp/<name>`` is the engine folder inspected before."""
    try:
        return inspect_folder(temp_fd, name, name, layout, artifact_base) == dict(owner)
    except (OutputError, OSError):
        return False


@functools.cache
def _renameat2() -> RenameAt2 | None:
    """A callable doing ``renameat2(dirfd, a, dirfd, b, flags)``, or None without libc support."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int

    def renameat2(src_fd: int, src: str, dst_fd: int, dst: str, flags: int) -> None:
        if function(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), src, None, dst)

    return renameat2


def remove_entry(dir_fd: int, name: str) -> None:
    """Delete ``name`` in the folder ``dir_fd``: a folder with ``rmtree`` through
    descriptors (never descending through a link), anything else (a link included) by
    unlinking the name itself. One already gone (a concurrent cleaner) is fine."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
