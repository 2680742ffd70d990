"""api.requests.server_path as a property: whatever string a client sends, a returned
path is fully resolved and inside the data roots, including through symbolic links
(into the root, out of it, loops) created in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.envelope import ApiError
from api.requests import server_path

COMPONENTS = [
    "a",
    "b",
    "..",
    ".",
    "",
    "in-link",
    "out-link",
    "loop",
    "up",
    "dangling",
    "new",
    "x.dcm",
    "\x00",
    "..\\..",
    "~",
    "😀",
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("server-path")
    root, outside = base / "root", base / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (outside / "a").mkdir(parents=True)
    (root / "a" / "b" / "x.dcm").write_bytes(b"x")
    (outside / "x.dcm").write_bytes(b"x")
    (root / "in-link").symlink_to(root / "a" / "b", target_is_directory=True)
    (root / "out-link").symlink_to(outside, target_is_directory=True)
    (root / "a" / "out-link").symlink_to(outside / "a", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "a" / "up").symlink_to("..", target_is_directory=True)
    (root / "dangling").symlink_to(outside / "gone")
    return {"base": base, "root": root, "outside": outside}


def _inside(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


@settings(max_examples=300, deadline=None)
@given(
    start=st.sampled_from(["root", "outside", "base", "/"]),
    parts=st.lists(st.sampled_from(COMPONENTS), max_size=8),
    noise=st.text(max_size=6),
)
def test_property_a_returned_path_is_resolved_and_inside_the_roots(
    layout: dict[str, Path], start: str, parts: list[str], noise: str
) -> None:
    prefix = "/" if start == "/" else str(layout[start])
    value = "/".join([prefix, *parts, noise]) if noise else "/".join([prefix, *parts])
    root = layout["root"]
    try:
        result = server_path("input_folder_path", value, [root])
    except ApiError as err:
        assert err.status == 400
        assert err.message.startswith(("Invalid path input_folder_path: ", "Path is outside the allowed data roots: "))
        if err.message.startswith("Path is outside"):
            assert not _inside(os.path.realpath(value), root)
        return
    assert result.is_absolute() and _inside(str(result), root)
    assert str(result) == os.path.realpath(result)  # no link left: swapping one later cannot redirect
    assert _inside(os.path.realpath(value), root)
    assert "\x00" not in value


def test_links_in_the_layout_behave_as_intended(layout: dict[str, Path]) -> None:
    root = layout["root"]
    assert server_path("f", str(root / "in-link" / "x.dcm"), [root]) == root / "a" / "b" / "x.dcm"
    assert server_path("f", str(root / "loop" / "loop" / "a"), [root]) == root / "a"
    for escape in ("out-link", "out-link/x.dcm", "a/out-link/new", "a/up/../..", "dangling"):
        with pytest.raises(ApiError, match="Path is outside the allowed data roots"):
            server_path("f", str(root / escape), [root])
