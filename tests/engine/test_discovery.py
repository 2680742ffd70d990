"""engine.discovery: the symbolic-link policy, loops, special files, odd names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.discovery import discover_inputs, iter_dicom_files
from inference.errors import SKIP_REASONS


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    """``root`` (the data root) holding ``in/`` with files, links and traps; ``outside``."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    inp = root / "in"
    (inp / "sub").mkdir(parents=True)
    (inp / ".hidden").mkdir()
    (root / "elsewhere").mkdir()
    outside.mkdir()
    (inp / "a.dcm").write_bytes(b"a")
    (inp / "sub" / "B.DCM").write_bytes(b"b")
    (inp / "notes.txt").write_text("not an input")
    (inp / ".hidden" / "h.dcm").write_bytes(b"h")
    (root / "elsewhere" / "e.dcm").write_bytes(b"e")
    (outside / "secret.dcm").write_bytes(b"s")
    (outside / "dir").mkdir()
    (outside / "dir" / "s2.dcm").write_bytes(b"s")
    return {"root": root, "in": inp, "outside": outside}


def test_plain_tree(tree: dict[str, Path]) -> None:
    found = discover_inputs(tree["in"], [tree["root"]])
    assert found.files == [str(tree["in"] / "a.dcm"), str(tree["in"] / "sub" / "B.DCM")]
    assert found.refused == []


def test_links_out_of_the_roots_are_refused_and_links_inside_followed(tree: dict[str, Path]) -> None:
    inp, root, outside = tree["in"], tree["root"], tree["outside"]
    (inp / "out-file.dcm").symlink_to(outside / "secret.dcm")
    (inp / "out-dir").symlink_to(outside / "dir", target_is_directory=True)
    (inp / "out-missing.dcm").symlink_to(outside / "no-such.dcm")  # existence is not revealed
    (inp / "in-file.dcm").symlink_to(root / "elsewhere" / "e.dcm")
    (inp / "in-dir").symlink_to(root / "elsewhere", target_is_directory=True)
    (inp / "dup.dcm").symlink_to(inp / "a.dcm")  # the same file twice is one input
    (inp / "loop").symlink_to(inp, target_is_directory=True)
    (inp / "sub" / "up").symlink_to("..", target_is_directory=True)
    (inp / "out-link.txt").symlink_to(outside / "secret.dcm")  # not a .dcm name: ignored

    found = discover_inputs(inp, [root])
    assert found.files == sorted([str(inp / "a.dcm"), str(inp / "sub" / "B.DCM"), str(root / "elsewhere" / "e.dcm")])
    assert [(r["path"], r["reason"]) for r in found.refused] == [
        (str(inp / "out-dir"), "outside_data_roots"),
        (str(inp / "out-file.dcm"), "outside_data_roots"),
        (str(inp / "out-missing.dcm"), "outside_data_roots"),
    ]
    assert "folder outside the data roots" in found.refused[0]["detail"]
    assert "file outside the data roots" in found.refused[1]["detail"]
    assert found.refused[1]["detail"] == found.refused[2]["detail"]
    assert "outside_data_roots" in SKIP_REASONS
    assert all(str(tree["outside"]) not in r["detail"] for r in found.refused)


def test_special_files_and_bad_names_are_refused(tree: dict[str, Path]) -> None:
    inp = tree["in"]
    os.mkfifo(inp / "pipe.dcm")
    (inp / "dangling.dcm").symlink_to(inp / "gone.dcm")
    bad = os.fsencode(str(inp)) + b"/bad-\xff.dcm"
    with open(bad, "wb") as handle:
        handle.write(b"x")
    found = discover_inputs(inp, [tree["root"]])
    refused = {r["path"]: (r["reason"], r["detail"]) for r in found.refused}
    assert refused == {
        str(inp / "bad-\\xff.dcm"): ("unreadable_dicom", "the path is not valid UTF-8; rename the file"),
        str(inp / "dangling.dcm"): ("unreadable_dicom", "cannot open file: No such file or directory"),
        str(inp / "pipe.dcm"): ("unreadable_dicom", "not a regular file (FIFO)"),
    }
    assert all(p.encode("utf-8") for p in found.files)


def test_deep_folders_do_not_recurse(tmp_path: Path) -> None:
    deep = tmp_path
    for _ in range(300):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "x.dcm").write_bytes(b"x")
    assert discover_inputs(tmp_path, [tmp_path]).files == [str(deep / "x.dcm")]


def test_cli_listing_keeps_its_rules(tree: dict[str, Path]) -> None:
    (tree["in"] / "loop").symlink_to(tree["in"], target_is_directory=True)
    assert [p.name for p in iter_dicom_files(tree["in"])] == ["a.dcm", "B.DCM"]
