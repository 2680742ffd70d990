"""Properties of reports.naming under hostile patient ids (hypothesis).

``test_reports_naming.py`` holds the examples and the basic properties on arbitrary
text; here the ids are built from the pieces attackers and broken modalities use
(separators, ``..``, NUL, controls, bidi and zero-width characters, device names,
emoji, CJK, Arabic, up to 1,000 characters), and the folders are really created.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reports.naming import (
    MAX_NAME_BYTES,
    MAX_NAME_CHARS,
    UnsafePathError,
    safe_join,
    sanitize_patient_id,
    sanitize_uid_component,
    short_hash,
)

PIECES = [
    "/",
    "\\",
    "..",
    ".",
    "\x00",
    "\t",
    "\n",
    "~",
    " ",
    ":",
    "*",
    "?",
    "😀",
    "🩻",
    "李",
    "雷",
    "محمد",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\udcff",
    "CON",
    "nul",
    "a",
    "Z",
    "1",
    "-",
    "_",
    "é",
    "e\u0301",
]
hostile_ids = (
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
    | st.text(max_size=1000)
    | st.builds(lambda piece, n: piece * n, st.sampled_from(PIECES), st.integers(1, 1000))
)


@pytest.fixture(scope="module")
def out_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("naming-root").resolve()


def assert_one_safe_component(name: str) -> None:
    assert name not in ("", ".", "..")
    assert os.path.basename(name) == name and Path(name).name == name
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith((".", "-", "_"))
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name)
    assert len(name) <= MAX_NAME_CHARS and len(name.encode("utf-8")) <= MAX_NAME_BYTES


@settings(max_examples=300, deadline=None)
@given(raw=hostile_ids)
def test_property_a_hostile_id_becomes_one_safe_folder_inside_the_root(out_root: Path, raw: str) -> None:
    name = sanitize_patient_id(raw)
    assert_one_safe_component(name)
    assert sanitize_patient_id(raw) == name  # deterministic
    normalized = unicodedata.normalize("NFC", raw)
    if "~" in name:  # hashed: the marker and the hash of the whole (normalised) id
        assert name.endswith("~" + short_hash(normalized))
    else:  # unchanged: the id was already safe
        assert name == normalized
    folder = safe_join(out_root, name)
    folder.mkdir(exist_ok=True)  # the file system agrees: one level below the root
    assert Path(os.path.realpath(folder)).parent == out_root


@settings(max_examples=200, deadline=None)
@given(first=hostile_ids, second=hostile_ids)
def test_property_distinct_hostile_ids_get_distinct_folders(first: str, second: str) -> None:
    assume(unicodedata.normalize("NFC", first) != unicodedata.normalize("NFC", second))
    assert sanitize_patient_id(first) != sanitize_patient_id(second)


@settings(max_examples=100, deadline=None)
@given(prefix=st.sampled_from(["L", "李", "😀", "."]), tail=st.text(min_size=1, max_size=5))
def test_property_long_ids_differing_only_at_the_end_stay_distinct(prefix: str, tail: str) -> None:
    """Two 1,000-character ids cut to the same 55-character stem differ by their hash."""
    long_id = prefix * 1000
    assume(unicodedata.normalize("NFC", long_id + tail) != unicodedata.normalize("NFC", long_id))
    assert sanitize_patient_id(long_id) != sanitize_patient_id(long_id + tail)


@settings(max_examples=200, deadline=None)
@given(raw=hostile_ids)
def test_property_uid_components_are_safe_too(raw: str) -> None:
    assert_one_safe_component(sanitize_uid_component(raw))


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(["a", "..", ".", "", "/", "/etc", "out", "in", "x\x00", "a/../..", "loop", "李"]),
        min_size=1,
        max_size=5,
    )
)
def test_property_safe_join_never_returns_a_path_outside_the_root(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str]
) -> None:
    base = tmp_path_factory.getbasetemp() / "safe-join-property"
    root = base / "root"
    if not root.exists():
        (root / "in").mkdir(parents=True)
        (base / "outside").mkdir()
        (root / "out").symlink_to(base / "outside", target_is_directory=True)
        (root / "loop").symlink_to(root, target_is_directory=True)
    try:
        result = safe_join(root, *parts)
    except UnsafePathError:
        return
    resolved_root = root.resolve()
    assert resolved_root in result.parents  # strictly inside, never the root itself
    assert Path(os.path.realpath(result)) == result
