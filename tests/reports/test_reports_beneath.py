"""reports.beneath and the descriptor-based paths of reports.publish: no link is ever followed.

Issue 15 item 2: a worker re-checks every path against its own data roots and never
follows (or deletes through) a link swapped in after the API checked the path.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from inference.errors import OutputError, OutsideDataRoots
from reports.beneath import check_under_roots, open_dir, open_file, write_file_atomic
from reports.publish import (
    artifact_names,
    folder_owners,
    publish_artifacts,
    remove_job_temp_dirs,
    remove_stale_temp_dirs,
)


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """``(data root, outside)``: two sibling folders, resolved."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    return data.resolve(), outside.resolve()


def files(tag: str) -> dict[str, bytes]:
    return {name: tag.encode() for name in artifact_names("P").values()}


def publish(out: Path, data_roots: list[Path] | None, tag: str = "x", rank: list[str] | None = None) -> object:
    return publish_artifacts(
        out, ["P"], files(tag), job_id="job-1", rank=rank or ["a"], layout="patient", data_roots=data_roots
    )


@pytest.mark.parametrize(
    "path",
    ["relative/path", "/data/../etc", "/data/./x", "/data//x", "/data/x/"],
)
def test_paths_that_are_not_normalised_are_refused(path: str) -> None:
    with pytest.raises(OutsideDataRoots, match="not a normalised absolute path"):
        check_under_roots(path, [Path("/data")], "the output folder")


def test_paths_outside_the_roots_are_refused(roots: tuple[Path, Path]) -> None:
    data, outside = roots
    with pytest.raises(OutsideDataRoots, match="outside this worker's data roots"):
        open_dir(outside, [data], "the output folder")
    with pytest.raises(OutsideDataRoots, match="outside this worker's data roots"):
        check_under_roots(str(data) + "-sibling", [data], "x")  # a prefix is not a parent
    assert check_under_roots(data / "a" / "b", [data], "x") == (data, ["a", "b"])


def test_a_link_anywhere_below_the_root_is_not_followed(roots: tuple[Path, Path]) -> None:
    data, outside = roots
    (outside / "secret.dcm").write_bytes(b"secret")
    (data / "in").mkdir()
    (data / "in" / "swapped.dcm").symlink_to(outside / "secret.dcm")
    (data / "linked-folder").symlink_to(outside)
    (data / "inner").mkdir()
    (data / "inner-link").symlink_to(data / "inner")  # even a link that stays inside
    for path in (data / "in" / "swapped.dcm", data / "linked-folder" / "secret.dcm"):
        with pytest.raises(OutsideDataRoots, match="passes through a symbolic link"):
            os.close(open_file(path, [data], "the input file"))
    with pytest.raises(OutsideDataRoots, match="passes through a symbolic link"):
        os.close(open_dir(data / "inner-link", [data], "the output folder"))
    (data / "in" / "real.dcm").write_bytes(b"mine")
    fd = open_file(data / "in" / "real.dcm", [data], "the input file")
    try:
        assert os.read(fd, 10) == b"mine"
    finally:
        os.close(fd)


def test_a_fifo_does_not_block_the_opener(roots: tuple[Path, Path]) -> None:
    data, _ = roots
    os.mkfifo(data / "pipe.dcm")
    fd = open_file(data / "pipe.dcm", [data], "the input file")  # O_NONBLOCK: returns at once
    os.close(fd)


def test_output_folder_swapped_for_a_link_is_not_written(roots: tuple[Path, Path]) -> None:
    data, outside = roots
    (data / "out").symlink_to(outside)  # the folder the API checked, replaced after the 202
    with pytest.raises(OutsideDataRoots, match="passes through a symbolic link"):
        publish(data / "out", [data])
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", [".tmp", ".locks"])
def test_engine_dot_folders_that_are_links_are_not_followed(roots: tuple[Path, Path], name: str) -> None:
    data, outside = roots
    (data / "out").mkdir()
    (data / "out" / name).symlink_to(outside)
    with pytest.raises(OutputError, match=f"'{name}' in the output folder is a symbolic link"):
        publish(data / "out", [data])
    assert list(outside.iterdir()) == [] and not (data / "out" / "P").exists()


@pytest.mark.parametrize("cleaner", ["stale", "job"])
def test_cleanup_never_deletes_through_a_tmp_link(roots: tuple[Path, Path], cleaner: str) -> None:
    """Reproduced: a `.tmp` link made the stale-staging cleanup empty its target."""
    data, outside = roots
    out = data / "out"
    out.mkdir()
    (outside / "job-1.old-report").write_text("precious")
    old = time.time() - 7200
    os.utime(outside / "job-1.old-report", (old, old))
    (out / ".tmp").symlink_to(outside)
    with pytest.raises(OutputError, match="'.tmp' in the output folder is a symbolic link"):
        if cleaner == "stale":
            remove_stale_temp_dirs(out, data_roots=[data])
        else:
            remove_job_temp_dirs(out, "job-1", [data])
    assert (outside / "job-1.old-report").read_text() == "precious"


def test_cleanup_removes_a_link_inside_tmp_not_its_target(roots: tuple[Path, Path]) -> None:
    data, outside = roots
    out = data / "out"
    (out / ".tmp").mkdir(parents=True)
    (outside / "keep").mkdir()
    (outside / "keep" / "file").write_text("precious")
    (out / ".tmp" / "job-1.link").symlink_to(outside / "keep")
    (out / ".tmp" / "old-link").symlink_to(outside / "keep")
    old = time.time() - 7200
    os.utime(out / ".tmp" / "old-link", (old, old), follow_symlinks=False)
    assert remove_job_temp_dirs(out, "job-1", [data]) == [out / ".tmp" / "job-1.link"]
    assert remove_stale_temp_dirs(out, data_roots=[data]) == [out / ".tmp" / "old-link"]
    assert (outside / "keep" / "file").read_text() == "precious"
    assert list((out / ".tmp").iterdir()) == []


def test_a_replaced_folder_is_removed_without_following_links_inside(roots: tuple[Path, Path]) -> None:
    data, outside = roots
    out = data / "out"
    out.mkdir()
    publish(out, [data], "old", ["a"])
    (outside / "file").write_text("precious")
    (out / "P" / "planted").symlink_to(outside)  # inside an engine folder, so it is swapped out
    publish(out, [data], "new", ["b"])
    assert (outside / "file").read_text() == "precious"
    assert (out / "P" / "P_report.pdf").read_bytes() == b"new"


def test_atomic_write_replaces_a_link_never_writes_through_it(roots: tuple[Path, Path]) -> None:
    data, outside = roots
    (outside / "target.json").write_text("precious")
    (data / "summary.json").symlink_to(outside / "target.json")
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_file_atomic(fd, "summary.json", b"{}")
    finally:
        os.close(fd)
    assert (outside / "target.json").read_text() == "precious"
    assert not (data / "summary.json").is_symlink() and (data / "summary.json").read_text() == "{}"


def test_folder_owners_reads_markers_without_following(roots: tuple[Path, Path]) -> None:
    data, outside = roots
    out = data / "out"
    out.mkdir()
    publish(out, [data], "x", ["2024", "1", "/in/a.dcm"])
    (outside / "Q").mkdir()
    (outside / "Q" / ".cxr-engine").write_text(json.dumps({"engine": "cxr-engine", "kind": "image"}))
    (out / "Q").symlink_to(outside / "Q")
    owners = folder_owners(out, [str(out / "P"), str(out / "Q"), str(out / "gone"), "/elsewhere/P"], [data])
    assert owners[str(out / "P")] is not None and owners[str(out / "P")]["rank"] == ["2024", "1", "/in/a.dcm"]
    assert owners[str(out / "Q")] is None and owners[str(out / "gone")] is None and owners["/elsewhere/P"] is None
