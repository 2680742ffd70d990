"""reports.publish: atomic, rank-ordered publication of one image's artifacts."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from inference.errors import OutputError
from reports import publish
from reports.naming import UnsafePathError
from reports.publish import (
    artifact_names,
    publish_artifacts,
    remove_job_temp_dirs,
    remove_stale_temp_dirs,
)

FOLDER = "PAT-1"


def artifacts(marker: str, job_id: str, rank: list[str], folder: str = FOLDER, size: int = 64) -> dict[str, bytes]:
    """Four files that all carry ``marker``; the predictions JSON carries job id and rank."""
    names = artifact_names(folder)
    document = {"marker": marker, "publication": {"job_id": job_id, "rank": rank}}
    return {
        names["predictions"]: json.dumps(document).encode(),
        names["heatmap"]: (marker.encode() + b"|heatmap|") * size,
        names["source_image"]: (marker.encode() + b"|source|") * size,
        names["report"]: (marker.encode() + b"|report|") * size,
    }


def markers(folder: Path) -> set[str]:
    found = set()
    for path in folder.iterdir():
        if path.name == publish.MARKER_NAME:
            continue
        data = path.read_bytes()
        found.add(json.loads(data)["marker"] if path.suffix == ".json" else data.split(b"|")[0].decode())
    return found


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def publish_as(
    root: Path,
    marker: str,
    job_id: str,
    rank: list[str],
    layout: str = "patient",
    parts: list[str] | None = None,
) -> publish.PublishOutcome:
    return publish_artifacts(
        root,
        parts or [FOLDER],
        artifacts(marker, job_id, rank),
        job_id=job_id,
        rank=rank,
        layout=layout,
    )


def test_artifact_names() -> None:
    assert artifact_names("P1") == {
        "predictions": "P1_predictions.json",
        "heatmap": "P1_heatmap.png",
        "source_image": "P1_source_image.png",
        "report": "P1_report.pdf",
    }


def test_publishes_four_files(output_root: Path) -> None:
    outcome = publish_as(output_root, "A", "job-1", ["2024", "1.2", "/a.dcm"])
    folder = output_root.resolve() / FOLDER
    assert outcome.status == "published" and outcome.folder == folder
    assert sorted(outcome.files) == sorted(artifact_names(FOLDER).values())
    assert all(path.parent == folder and path.is_file() for path in outcome.files.values())
    assert markers(folder) == {"A"}
    assert json.loads((folder / ".cxr-engine").read_text()) == {
        "engine": "cxr-engine",
        "kind": "image",
        "layout": "patient",
        "job_id": "job-1",
        "rank": ["2024", "1.2", "/a.dcm"],
        "model": {},
    }
    assert outcome.owner is not None and outcome.owner["job_id"] == "job-1"
    assert sorted(p.name for p in output_root.iterdir()) == [".locks", ".tmp", FOLDER]
    assert list((output_root / ".tmp").iterdir()) == []


def test_same_job_higher_rank_replaces(output_root: Path) -> None:
    publish_as(output_root, "low", "job-1", ["2024-01", "1.1", "/a.dcm"])
    assert publish_as(output_root, "high", "job-1", ["2024-02", "1.1", "/b.dcm"]).status == "published"
    assert markers(output_root / FOLDER) == {"high"}


def test_same_job_lower_rank_is_superseded_and_folder_untouched(
    output_root: Path,
) -> None:
    publish_as(output_root, "high", "job-1", ["2024-02", "1.1", "/b.dcm"])
    folder = output_root / FOLDER
    before, inode = snapshot(folder), folder.stat().st_ino
    outcome = publish_as(output_root, "low", "job-1", ["2024-01", "9.9", "/z.dcm"])
    assert outcome.status == "superseded" and outcome.folder == folder.resolve()
    assert snapshot(folder) == before and folder.stat().st_ino == inode
    assert list((output_root / ".tmp").iterdir()) == []


def test_equal_rank_is_a_retry_and_republishes(output_root: Path) -> None:
    rank = ["2024-02", "1.1", "/b.dcm"]
    publish_as(output_root, "first", "job-1", rank)
    assert publish_as(output_root, "retry", "job-1", rank).status == "published"
    assert markers(output_root / FOLDER) == {"retry"}


def test_rank_rule_holds_across_jobs(output_root: Path) -> None:
    """Issue 15 item 5: a later job's lower-ranked image does not replace the folder."""
    publish_as(output_root, "old-job", "job-1", ["2099", "9", "/z.dcm"])
    outcome = publish_as(output_root, "new-job", "job-2", ["1900", "0", "/a.dcm"])
    assert outcome.status == "superseded" and outcome.owner is not None
    assert outcome.owner["job_id"] == "job-1" and outcome.owner["rank"] == ["2099", "9", "/z.dcm"]
    assert markers(output_root / FOLDER) == {"old-job"}
    assert publish_as(output_root, "newer", "job-3", ["2100", "0", "/b.dcm"]).status == "published"
    assert markers(output_root / FOLDER) == {"newer"}


def test_equal_rank_from_another_job_republishes(output_root: Path) -> None:
    rank = ["2024-02", "1.1", "/b.dcm"]
    publish_as(output_root, "first", "job-1", rank)
    assert publish_as(output_root, "rerun", "job-2", rank).status == "published"
    assert markers(output_root / FOLDER) == {"rerun"}


def test_folder_without_marker_is_never_replaced(output_root: Path) -> None:
    """Issue 15 item 1: a client's own folder (here with a DICOM and notes) is refused."""
    victim = output_root / FOLDER
    victim.mkdir()
    (victim / f"{FOLDER}_predictions.json").write_text("{not json")
    (victim / "notes.txt").write_text("hand-made")
    (victim / "study.dcm").write_bytes(b"DICM")
    before = snapshot(victim)
    with pytest.raises(OutputError, match=f"'{FOLDER}' in the output folder is a folder the engine did not make"):
        publish_as(output_root, "new", "job-1", ["a"])
    assert snapshot(victim) == before
    assert list((output_root / ".tmp").iterdir()) == []


def test_a_file_is_never_replaced_by_a_folder(output_root: Path) -> None:
    """Issue 15 item 1: an input DICOM whose name passes the sanitiser stays a file."""
    dicom = output_root / "phantom_1000_00003.dcm"
    dicom.write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(OutputError, match="'phantom_1000_00003.dcm' in the output folder is a file"):
        publish_as(output_root, "new", "job-1", ["a"], parts=["phantom_1000_00003.dcm"])
    assert dicom.read_bytes() == b"\0" * 128 + b"DICM"


@pytest.mark.parametrize("content", ["", "{}", '{"engine": "other"}', "[1]", "x" * 70000])
def test_unusable_marker_is_a_conflict(output_root: Path, content: str) -> None:
    victim = output_root / FOLDER
    victim.mkdir()
    (victim / ".cxr-engine").write_text(content)
    (victim / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="marker"):
        publish_as(output_root, "new", "job-1", ["a"])
    assert (victim / "keep.txt").read_text() == "mine"


def test_marker_that_is_a_link_is_a_conflict(output_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "forged-marker"
    outside.write_text(json.dumps({"engine": "cxr-engine", "kind": "image", "layout": "patient", "rank": []}))
    victim = output_root / FOLDER
    victim.mkdir()
    (victim / ".cxr-engine").symlink_to(outside)
    with pytest.raises(OutputError, match="cannot be read"):
        publish_as(output_root, "new", "job-1", ["a"])
    assert (victim / ".cxr-engine").is_symlink()


def test_folder_published_before_markers_is_adopted(output_root: Path) -> None:
    """Exactly the four artifacts and a predictions JSON with a rank: an earlier engine output."""
    legacy = output_root / FOLDER
    legacy.mkdir()
    for name, data in artifacts("legacy", "job-0", ["2020", "1", "/old.dcm"]).items():
        (legacy / name).write_bytes(data)
    assert publish_as(output_root, "low", "job-1", ["2019", "1", "/a.dcm"]).status == "superseded"
    assert publish_as(output_root, "new", "job-1", ["2021", "1", "/b.dcm"]).status == "published"
    assert markers(legacy) == {"new"} and (legacy / ".cxr-engine").is_file()


def test_instance_layout_applies_the_rank_rule(output_root: Path) -> None:
    parts = [FOLDER, "1.2.3"]
    publish_as(output_root, "high", "job-1", ["2024-02"], layout="instance", parts=parts)
    outcome = publish_as(output_root, "low", "job-2", ["2024-01"], layout="instance", parts=parts)
    assert outcome.status == "superseded" and outcome.folder == output_root.resolve() / FOLDER / "1.2.3"
    assert markers(outcome.folder) == {"high"}
    container = json.loads((output_root / FOLDER / ".cxr-engine").read_text())
    assert container == {"engine": "cxr-engine", "kind": "container"}
    assert publish_as(output_root, "equal", "job-3", ["2024-02"], layout="instance", parts=parts).status == "published"
    assert markers(outcome.folder) == {"equal"}


def test_instance_layout_refuses_a_client_folder_as_container(output_root: Path) -> None:
    (output_root / FOLDER).mkdir()
    (output_root / FOLDER / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not make"):
        publish_as(output_root, "x", "job-1", ["a"], layout="instance", parts=[FOLDER, "1.2.3"])
    assert [p.name for p in (output_root / FOLDER).iterdir()] == ["notes.txt"]


def test_layouts_do_not_replace_each_other(output_root: Path) -> None:
    publish_as(output_root, "patient", "job-1", ["a"])
    with pytest.raises(OutputError, match="holds the engine's patient-layout output"):
        publish_as(output_root, "x", "job-2", ["b"], layout="instance", parts=[FOLDER, "1.2.3"])
    publish_as(output_root, "inst", "job-3", ["a"], layout="instance", parts=["OTHER", "1.2.3"])
    with pytest.raises(OutputError, match="holds the engine's instance-layout folders"):
        publish_as(output_root, "x", "job-4", ["z"], parts=["OTHER"])
    assert markers(output_root / FOLDER) == {"patient"}


@pytest.mark.parametrize(
    "parts",
    [
        ["a", "b"],
        [".."],
        ["../x"],
        ["a/../.."],
        ["/etc"],
        [".tmp"],
        [".locks"],
        [".hidden"],
        [""],
        [],
        [FOLDER, ".."],
    ],
)
def test_escaping_folder_parts_are_refused(output_root: Path, parts: list[str]) -> None:
    with pytest.raises(UnsafePathError):
        publish_artifacts(
            output_root,
            parts,
            artifacts("x", "j", ["a"]),
            job_id="j",
            rank=["a"],
            layout="patient",
        )
    assert not (output_root / ".tmp").exists() or list((output_root / ".tmp").iterdir()) == []


def test_symlinked_folders_are_refused(output_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (output_root / "escape").symlink_to(outside)
    (output_root / "real").mkdir()
    (output_root / "alias").symlink_to(output_root / "real")
    for name in ("escape", "alias"):
        with pytest.raises(OutputError, match="symbolic link"):
            publish_as(output_root, "x", "j", ["a"], parts=[name])
    assert list(outside.iterdir()) == [] and list((output_root / "real").iterdir()) == []
    assert (output_root / "escape").is_symlink()


@pytest.mark.parametrize("name", ["../evil.json", ".hidden", "a/b", ""])
def test_unsafe_file_names_are_refused(output_root: Path, name: str) -> None:
    with pytest.raises(UnsafePathError):
        publish_artifacts(
            output_root,
            [FOLDER],
            {name: b"x"},
            job_id="j",
            rank=["a"],
            layout="patient",
        )


def test_bad_layout_and_rank_are_refused(output_root: Path) -> None:
    with pytest.raises(ValueError):
        publish_artifacts(output_root, [FOLDER], {}, job_id="j", rank=["a"], layout="flat")
    numeric_rank: Any = [1]
    with pytest.raises(ValueError):
        publish_artifacts(output_root, [FOLDER], {}, job_id="j", rank=numeric_rank, layout="patient")


def test_failed_swap_leaves_no_temp_dir(output_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(publish, "_swap_into_place", explode)
    with pytest.raises(OSError):
        publish_as(output_root, "x", "j", ["a"])
    assert list((output_root / ".tmp").iterdir()) == [] and not (output_root / FOLDER).exists()


def test_renameat2_exchange_swaps_directories_here(tmp_path: Path) -> None:
    renameat2 = publish._renameat2()
    if renameat2 is None:
        pytest.skip("libc has no renameat2")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "one").write_text("1")
    (second / "two").write_text("2")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        renameat2(fd, "first", fd, "second", 2)
        with pytest.raises(FileExistsError):
            renameat2(fd, "first", fd, "second", 1)  # RENAME_NOREPLACE
    finally:
        os.close(fd)
    assert [p.name for p in first.iterdir()] == ["two"] and [p.name for p in second.iterdir()] == ["one"]


@pytest.mark.parametrize("failure", ["ENOSYS", "EINVAL", "no-libc-symbol"])
def test_fallback_without_renameat2(output_root: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    def unsupported(*args: Any) -> None:
        code = getattr(errno, failure)
        raise OSError(code, os.strerror(code))

    replacement = None if failure == "no-libc-symbol" else unsupported
    monkeypatch.setattr(publish, "_renameat2", lambda: replacement)
    publish_as(output_root, "old", "job-1", ["a"])
    assert publish_as(output_root, "new", "job-1", ["b"]).status == "published"
    assert markers(output_root / FOLDER) == {"new"}
    assert list((output_root / ".tmp").iterdir()) == []


def test_remove_stale_temp_dirs(output_root: Path) -> None:
    temp = output_root / ".tmp"
    (temp / "crashed").mkdir(parents=True)
    (temp / "crashed" / "half.png").write_bytes(b"x")
    (temp / "live").mkdir()
    old = time.time() - 7200
    os.utime(temp / "crashed", (old, old))
    assert remove_stale_temp_dirs(output_root) == [temp / "crashed"]
    assert [p.name for p in temp.iterdir()] == ["live"]


def test_remove_job_temp_dirs_takes_only_that_jobs_leftovers(output_root: Path) -> None:
    """What a writer killed mid-publish leaves is named after its job, and goes when the
    job finishes; another job's staging folder (maybe live) stays."""
    temp = output_root / ".tmp"
    (temp / "job-a.1f2e").mkdir(parents=True)
    (temp / "job-a.1f2e" / "half.pdf").write_bytes(b"%PDF-")
    (temp / "job-b.9c0d").mkdir()
    assert remove_job_temp_dirs(output_root, "job-a") == [temp / "job-a.1f2e"]
    assert [p.name for p in temp.iterdir()] == ["job-b.9c0d"]
    assert remove_job_temp_dirs(output_root, "*") == []  # never a pattern


def test_staging_folder_is_named_after_its_job(output_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = publish._swap_into_place

    def spy(temp_fd: int, staging: str, *rest: Any) -> None:
        seen.append(staging)
        real(temp_fd, staging, *rest)

    monkeypatch.setattr(publish, "_swap_into_place", spy)
    publish_artifacts(
        output_root, [FOLDER], artifacts("a", "job-7", ["1"]), job_id="job-7", rank=["1"], layout="patient"
    )
    assert len(seen) == 1 and seen[0].startswith("job-7.")


def test_publisher_waits_for_the_folder_lock(output_root: Path) -> None:
    root = output_root.resolve()
    done = threading.Event()

    def run() -> None:
        publish_as(output_root, "waiting", "job-1", ["a"])
        done.set()

    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    with publish._folder_lock(root_fd, [FOLDER]):
        thread = threading.Thread(target=run)
        thread.start()
        assert not done.wait(0.3)  # blocked on the flock held above
        assert not (output_root / FOLDER).exists()
    thread.join(10)
    os.close(root_fd)
    assert done.is_set() and markers(output_root / FOLDER) == {"waiting"}


def _publisher(root: str, marker: str, ranks: list[int], start: Any) -> None:
    """Child process: once both children are ready, publish one image per rank in order."""
    start.wait(60)
    for value in ranks:
        rank = [
            f"2024-01-01T00:00:{value:02d}",
            f"1.2.{value}",
            f"/in/{marker}/{value}.dcm",
        ]
        publish_as(Path(root), f"{marker}-{value:02d}", "job-race", rank)


def _consistent_view(folder: Path) -> set[str] | None:
    """Markers of one directory snapshot read through a directory fd, or None if it vanished."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        found = set()
        for name in artifact_names(FOLDER).values():
            fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as handle:
                data = handle.read()
            found.add(json.loads(data)["marker"] if name.endswith(".json") else data.split(b"|")[0].decode())
        return found
    except FileNotFoundError:  # the old folder was removed after a swap while we read it
        return None
    finally:
        os.close(dir_fd)


def test_two_processes_racing_leave_the_max_rank_complete(output_root: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    # A climbs through the even ranks (nearly every publish swaps a folder while B also
    # writes); B goes through the odd ranks in shuffled order (mostly superseded).
    plan = {"A": list(range(0, 40, 2)), "B": list(range(1, 40, 2))}
    random.Random(7).shuffle(plan["B"])
    workers = [ctx.Process(target=_publisher, args=(str(output_root), m, r, start)) for m, r in plan.items()]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):  # a reader sees one set, never a mix
        time.sleep(0.002)
        view = _consistent_view(output_root / FOLDER)
        assert view is None or len(view) == 1, f"mixed folder observed: {view}"
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert markers(output_root / FOLDER) == {"B-39"}
    assert len(list((output_root / FOLDER).iterdir())) == 5  # four artifacts and the marker
    assert list((output_root / ".tmp").iterdir()) == []
    assert [p.name for p in output_root.iterdir() if not p.name.startswith(".")] == [FOLDER]
