"""Atomic publication of one image's artifacts into its output folder.

Stage: publication. Inputs: the output root, the already-sanitised folder names, the
artifact bytes by file name, and the image's job id and rank. Output: a
``PublishOutcome`` saying whether this image now owns the folder.

The rule that decides which image owns a folder (``layout: "patient"``):

* Within one job, the image with the greatest ``rank`` wins. The caller computes rank as
  ``[acquisition datetime, SOP instance UID, source path]`` (strings, compared as Python
  lists), so the winner does not depend on the order in which workers finish. An image
  whose rank is lower than the folder's current rank is ``"superseded"`` and the folder
  is left untouched. An equal rank is the same source file published again (a retried
  task), and replaces the folder with identical content.
* A folder left by an earlier job (a different ``publication.job_id``, or no readable
  ``*_predictions.json``) is always replaced by the first image of the new job.
* ``layout: "instance"`` gives every image its own folder, which is always replaced.

How a folder is replaced, so that readers see the old set or the new set, never a mix:

1. every file is written and fsync'd into a fresh ``<root>/.tmp/<job_id>.<uuid>/``, on
   the same file system as the target (the dot-folder is never taken for a patient
   folder); what a killed writer leaves there is removed when its job finishes
   (``remove_job_temp_dirs``) or, for anything else, after an hour
   (``remove_stale_temp_dirs``);
2. an exclusive ``flock`` on ``<root>/.locks/<sha256 of the relative target>.lock``
   serialises all publishers of that folder, across processes and hosts sharing the
   lock semantics (local file systems; NFSv4 maps flock to byte-range locks);
3. under the lock the rule above is applied; the winner swaps the temp dir into place
   with ``renameat2(RENAME_EXCHANGE)`` (one atomic step; the old folder ends up at the
   temp path and is removed), or with ``rename`` when there is no target yet;
4. the parent directory is fsync'd.

Where ``renameat2`` is unavailable (``ENOSYS``: old kernel or libc; ``EINVAL``: a file
system without ``RENAME_EXCHANGE``) the fallback renames the old folder aside and then
renames the new one in: a reader may briefly find the folder absent, but never mixed.
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
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reports.naming import UnsafePathError, safe_join

TEMP_DIR_NAME = ".tmp"
LOCK_DIR_NAME = ".locks"
LAYOUTS = ("patient", "instance")
ARTIFACT_SUFFIXES: dict[str, str] = {
    "predictions": "_predictions.json",
    "heatmap": "_heatmap.png",
    "source_image": "_source_image.png",
    "report": "_report.pdf",
}
PREDICTIONS_SUFFIX = ARTIFACT_SUFFIXES["predictions"]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

PublishStatus = Literal["published", "superseded"]
RenameExchange = Callable[[Path, Path], None]


@dataclass(frozen=True)
class PublishOutcome:
    """``status``: "published" (this image owns ``folder``) or "superseded" (it lost
    and nothing was written); ``files``: artifact name -> final path (as it would be
    when superseded)."""

    status: PublishStatus
    folder: Path
    files: dict[str, Path]


def artifact_names(patient_folder: str) -> dict[str, str]:
    """Artifact kind -> file name, as in API.md "Output layout".

    ``{"predictions": "<p>_predictions.json", "heatmap": "<p>_heatmap.png",
    "source_image": "<p>_source_image.png", "report": "<p>_report.pdf"}``.
    """
    return {kind: patient_folder + suffix for kind, suffix in ARTIFACT_SUFFIXES.items()}


def publish_artifacts(
    output_root: Path,
    folder_parts: list[str],
    files: dict[str, bytes],
    *,
    job_id: str,
    rank: list[str],
    layout: str,
) -> PublishOutcome:
    """Publish ``files`` as the folder ``output_root/<folder_parts...>`` (module rule).

    Inputs: ``output_root``, an existing directory; ``folder_parts``, sanitised names
    (``[patient]`` for layout "patient", ``[patient, uid]`` for "instance"), none of
    which may start with a dot; ``files``, plain file name -> bytes; ``job_id`` and
    ``rank`` as written in the predictions JSON's ``publication``.
    Output: ``PublishOutcome``. Raises ``UnsafePathError`` when a folder part or file
    name would leave the output root or pass through a symlink, ``ValueError`` for an
    unknown layout, and ``OSError`` from the file system; the temp dir never outlives
    the call.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not isinstance(rank, list) or not all(isinstance(item, str) for item in rank):
        raise ValueError(f"rank must be a list of strings, got {rank!r}")
    root = Path(output_root).resolve(strict=True)
    target = _target_folder(root, folder_parts)
    for name in files:
        _check_file_name(name)
    final_paths = {name: target / name for name in files}
    staging = _write_staging_dir(root, files, job_id)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(root, target):
            if layout == "patient" and _current_owner_wins(target, job_id, rank):
                return PublishOutcome("superseded", target, final_paths)
            _swap_into_place(staging, target)
            _fsync_dir(target.parent)
        return PublishOutcome("published", target, final_paths)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temp_dirs(output_root: Path, older_than_s: float = 3600.0) -> list[Path]:
    """Delete ``<root>/.tmp/*`` entries older than ``older_than_s`` (left by crashes).

    Returns what was removed. A live publisher's staging dir is minutes old at most, so
    the default hour never touches one.
    """
    temp_root = Path(output_root) / TEMP_DIR_NAME
    if not temp_root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed: list[Path] = []
    for entry in temp_root.iterdir():
        if entry.lstat().st_mtime < cutoff:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def remove_job_temp_dirs(output_root: Path, job_id: str) -> list[Path]:
    """Delete the staging folders of ``job_id`` (``<root>/.tmp/<job_id>.*``).

    Call it only once every task of the job has ended (its chord callback): then such a
    folder can only be the leftover of a writer that was killed mid-publish.
    """
    temp_root = Path(output_root) / TEMP_DIR_NAME
    if not temp_root.is_dir() or not _staging_prefix_ok(job_id):
        return []
    removed: list[Path] = []
    for entry in temp_root.glob(f"{job_id}.*"):
        _remove(entry)
        removed.append(entry)
    return removed


def _staging_prefix_ok(job_id: str) -> bool:
    return bool(job_id) and all(c.isalnum() or c in "-_" for c in job_id)


def _target_folder(root: Path, folder_parts: Sequence[str]) -> Path:
    """The folder for ``folder_parts`` under ``root``; refuses dot names and symlinks."""
    if not folder_parts:
        raise UnsafePathError("no folder name given")
    for part in folder_parts:
        if part.startswith(".") or "/" in part or "\\" in part:
            raise UnsafePathError(f"unsafe folder name: {part!r}")
    target = safe_join(root, *folder_parts)
    if target != root.joinpath(*folder_parts):
        raise UnsafePathError(f"folder {'/'.join(folder_parts)!r} passes through a symlink")
    return target


def _check_file_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
        raise UnsafePathError(f"unsafe artifact file name: {name!r}")


def _write_staging_dir(root: Path, files: Mapping[str, bytes], job_id: str) -> Path:
    """Write every file (fsync'd) into a fresh ``<root>/.tmp/<job_id>.<uuid>`` and return it."""
    temp_root = root / TEMP_DIR_NAME
    temp_root.mkdir(exist_ok=True)
    prefix = f"{job_id}." if _staging_prefix_ok(job_id) else ""
    staging = temp_root / f"{prefix}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for name, data in files.items():
            with open(staging / name, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


@contextmanager
def _folder_lock(root: Path, target: Path) -> Iterator[None]:
    """Hold an exclusive flock dedicated to ``target`` for the duration of the block."""
    lock_dir = root / LOCK_DIR_NAME
    lock_dir.mkdir(exist_ok=True)
    key = hashlib.sha256(target.relative_to(root).as_posix().encode("utf-8", "surrogatepass"))
    fd = os.open(lock_dir / f"{key.hexdigest()}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _current_owner_wins(target: Path, job_id: str, rank: Sequence[str]) -> bool:
    """True when ``target`` holds an image of the same job with a greater rank."""
    publication = _read_publication(target)
    if publication is None or publication.get("job_id") != job_id:
        return False
    existing = publication.get("rank")
    if not isinstance(existing, list) or not all(isinstance(item, str) for item in existing):
        return False
    return existing > list(rank)


def _read_publication(folder: Path) -> dict[str, Any] | None:
    """The ``publication`` object of the folder's predictions JSON, if readable."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*" + PREDICTIONS_SUFFIX)):
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        publication = document.get("publication") if isinstance(document, dict) else None
        if isinstance(publication, dict):
            return publication
    return None


def _swap_into_place(staging: Path, target: Path) -> None:
    """Make ``staging`` appear at ``target``; the old content (if any) ends at ``staging``."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    exchange = _renameat2_exchange()
    if exchange is not None:
        try:
            exchange(staging, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
        else:
            _remove(staging)
            return
    aside = staging.with_name(staging.name + ".old")
    os.rename(target, aside)  # from here until the next rename the folder is absent
    os.rename(staging, target)
    _remove(aside)


@functools.cache
def _renameat2_exchange() -> RenameExchange | None:
    """A callable doing ``renameat2(a, b, RENAME_EXCHANGE)``, or None without libc support."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return None
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int

    def exchange(first: Path, second: Path) -> None:
        result = renameat2(
            _AT_FDCWD,
            os.fsencode(first),
            _AT_FDCWD,
            os.fsencode(second),
            _RENAME_EXCHANGE,
        )
        if result != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(first), None, str(second))

    return exchange


def _remove(path: Path) -> None:
    """Delete a replaced folder; one already gone (a concurrent cleaner) is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
