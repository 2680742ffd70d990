"""Output faults: a full disk and a read-only file system under the output folder.

Real file systems, not simulated errors: a small ``tmpfs`` filled to the brim, and a
``tmpfs`` remounted read-only (the tests run as root here and in CI, where ``mount``
works). If ``mount`` is refused, the test says so with a warning and falls back to a
file squatting on the staging folder ``.tmp`` (an error of another errno); it never
passes silently. One real worker on Redis database 11; the API through Flask's test client.
"""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.service import SECRET, WorkerProcess, redis_db_url, worker_env

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

DISK_DB_URL = redis_db_url("faults_disk")


@contextmanager
def tmpfs(mount_point: Path, size_kib: int, *, read_only: bool = False) -> Iterator[str | None]:
    """Mount a tmpfs at ``mount_point``; yields the expected errno name, or None when
    mounting was refused and the caller must use the squatting fallback."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        warnings.warn(
            f"mount -t tmpfs refused ({done.stderr.strip()}): falling back to a file squatting "
            f"on {mount_point}/.tmp instead of a real {'read-only' if read_only else 'full'} disk",
            stacklevel=2,
        )
        yield None
        return
    try:
        yield "EROFS" if read_only else "ENOSPC"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(folder: Path) -> None:
    """Write zeros until the file system is full."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    assert os.statvfs(folder).f_bavail == 0


def squat(output: Path) -> None:
    (output / ".tmp").write_text("squatter: the staging folder cannot be created")


@pytest.fixture(scope="module")
def disk_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, dict[str, str]]]:
    from api import create_app
    from api.auth import issue_token
    from demo.phantom_dicom import write_phantoms

    root = tmp_path_factory.mktemp("faults-disk")
    write_phantoms(root / "in", 4, seed=6161, size=128)
    client = redis.Redis.from_url(DISK_DB_URL)
    client.flushdb()
    app = create_app(
        {
            "REDIS_URL": DISK_DB_URL,
            "CXR_JWT_SECRET": SECRET,
            "CXR_DATA_ROOTS": str(root),
            "CXR_BULK_WAIT_S": 60.0,
            "CXR_SINGLE_WAIT_S": 60.0,
            "CXR_POLL_INTERVAL_S": 0.1,
        }
    )
    worker = WorkerProcess("disk-faults", root / "worker.log", worker_env(DISK_DB_URL))
    try:
        worker.wait_ready(app.extensions["cxr_celery"])
        yield app, root, {"Authorization": issue_token(app, "disk")}
    finally:
        worker.stop()
        client.flushdb()


def _assert_nothing_published(output: Path, allowed: set[str]) -> None:
    """No patient folder and no staging leftover: only dot folders and ``allowed``."""
    names = {p.name for p in output.iterdir()}
    assert {n for n in names if not n.startswith(".")} <= allowed, names
    temp = output / ".tmp"
    assert not temp.is_dir() or list(temp.iterdir()) == []


def _bulk_skips_every_file(app: Any, auth: dict[str, str], inp: Path, out: Path, errno_name: str | None) -> None:
    response = app.test_client().post(
        "/bulk_inference", headers=auth, json={"input_folder_path": str(inp), "output_folder_path": str(out)}
    )
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()["Data"]
    assert summary["status"] == "completed"
    assert (summary["total"], summary["processed"], len(summary["skipped"])) == (4, 0, 4)
    expected = re.escape(errno_name) if errno_name else "E[A-Z]+"
    for skip in summary["skipped"]:
        assert skip["reason"] == "output_error"
        assert re.fullmatch(rf"could not write the output folder \({expected}: .+\)", skip["detail"]), skip


def test_full_disk_bulk_skips_each_file_and_single_answers_500(disk_env: tuple[Any, Path, dict[str, str]]) -> None:
    app, root, auth = disk_env
    out = root / "full"
    with tmpfs(out, 512) as errno_name:
        if errno_name is None:
            squat(out)
        else:
            fill(out)
        _bulk_skips_every_file(app, auth, root / "in", out, errno_name)
        _assert_nothing_published(out, {"filler"})
        image = next((root / "in").glob("*.dcm"))
        response = app.test_client().post(
            "/single_inference", headers=auth, json={"input_image_path": str(image), "output_folder_path": str(out)}
        )
        assert response.status_code == 500
        assert response.get_json()["Message"] == f"Unable to create output folder: {out}"
        _assert_nothing_published(out, {"filler"})


def test_read_only_staging_area_bulk_skips_each_file(disk_env: tuple[Any, Path, dict[str, str]]) -> None:
    """The output folder is writable (the API's check passes) but where the worker stages
    the files is a read-only file system: every file is skipped with EROFS."""
    app, root, auth = disk_env
    out = root / "ro-staging"
    out.mkdir()
    with tmpfs(out / ".tmp", 64, read_only=True) as errno_name:
        if errno_name is None:
            (out / ".tmp").rmdir()
            squat(out)
        _bulk_skips_every_file(app, auth, root / "in", out, errno_name)
        _assert_nothing_published(out, set())


def test_read_only_output_folder_is_refused_up_front(disk_env: tuple[Any, Path, dict[str, str]]) -> None:
    app, root, auth = disk_env
    out = root / "ro-out"
    with tmpfs(out, 64, read_only=True) as errno_name:
        if errno_name is None:
            pytest.fail("mount -t tmpfs was refused: a read-only output folder cannot be made here")
        response = app.test_client().post(
            "/bulk_inference",
            headers=auth,
            json={"input_folder_path": str(root / "in"), "output_folder_path": str(out)},
        )
        assert response.status_code == 500
        assert response.get_json()["Message"] == f"Unable to create output folder: {out}"
        assert list(out.iterdir()) == []
