"""reports.naming: the folder-name sanitiser and safe_join."""

from __future__ import annotations

import hashlib
import re
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reports.naming import (
    UnsafePathError,
    safe_join,
    sanitize_patient_id,
    sanitize_uid_component,
)

HASHED = re.compile(r"~[0-9a-f]{8}$")
PROPERTY_ROOT = Path(tempfile.gettempdir()) / "cxr-naming-property-root"


def suffix_of(raw: str) -> str:
    return "~" + hashlib.sha256(unicodedata.normalize("NFC", raw).encode("utf-8")).hexdigest()[:8]


def assert_safe(name: str) -> None:
    assert name and name not in (".", "..")
    assert not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert all(unicodedata.category(c) != "Cc" for c in name)
    assert len(name) <= 64 and len(name.encode("utf-8")) <= 128


@pytest.mark.parametrize(
    "raw",
    [
        "PAT-00123",
        "12345",
        "Müller",
        "李雷",
        "محمد",
        "Иванов_Иван",
        "a.b-c_d",
        "x" * 64,
        "ID_12345678",
    ],
)
def test_safe_ids_are_unchanged(raw: str) -> None:
    assert sanitize_patient_id(raw) == raw


@pytest.mark.parametrize(
    ("raw", "expected_base"),
    [
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("C:\\x", "C_x"),
        ("../../etc/passwd", "etc_passwd"),
        ("..", "id"),
        (".", "id"),
        ("....", "id"),
        ("", "id"),
        ("   ", "id"),
        (".hidden", "hidden"),
        ("-rf", "rf"),
        ("a\x00b", "ab"),
        ("PAT 1", "PAT_1"),
        ("a / \\ b", "a_b"),
        ("a\u202eb", "ab"),  # bidi override dropped
        ("😀PAT", "PAT"),
        ("PAT😀😀1", "PAT_1"),
        ("name.", "name"),
        ("CON", "CON"),
        ("nul.txt", "nul.txt"),
        ("a~b", "a_b"),
    ],
)
def test_unsafe_ids_get_base_and_hash(raw: str, expected_base: str) -> None:
    name = sanitize_patient_id(raw)
    assert name == expected_base + suffix_of(raw)
    assert_safe(name)


def test_nfd_and_nfc_spellings_share_a_folder() -> None:
    nfd = unicodedata.normalize("NFD", "Müller")
    assert nfd != "Müller"
    assert sanitize_patient_id(nfd) == "Müller"


def test_long_ids_are_capped_with_hash() -> None:
    name = sanitize_patient_id("x" * 1000)
    assert len(name) == 64 and HASHED.search(name)
    assert sanitize_patient_id("x" * 65) != sanitize_patient_id("x" * 66)


def test_multibyte_ids_are_capped_by_bytes() -> None:
    name = sanitize_patient_id("李" * 60)  # 60 chars but 180 bytes
    assert len(name.encode("utf-8")) <= 128 and HASHED.search(name)


def test_lone_surrogate_does_not_crash() -> None:
    name = sanitize_patient_id("a\udcffb")
    assert_safe(name)
    name.encode("utf-8")  # no surrogate left


def test_uid_component() -> None:
    uid = "1.2.826.0.1.3680043.8.498.10"
    assert sanitize_uid_component(uid) == uid
    assert sanitize_uid_component(uid + "\x00") == uid  # DICOM UI padding
    assert sanitize_uid_component("../1.2").startswith("1.2~")
    assert sanitize_uid_component("").startswith("uid~")


@given(st.text())
def test_property_sanitised_name_is_safe(raw: str) -> None:
    name = sanitize_patient_id(raw)
    assert_safe(name)
    assert sanitize_patient_id(raw) == name  # deterministic
    assert safe_join(PROPERTY_ROOT, name).parent == PROPERTY_ROOT.resolve()


@given(st.text(alphabet=st.sampled_from("ab./\\:\x00 _-~😀李"), max_size=12))
def test_property_unsafe_characters_force_a_hash(raw: str) -> None:
    name = sanitize_patient_id(raw)
    assert_safe(name)
    if any(c in "/\\:\x00 ~😀" for c in raw) or raw.startswith((".", "_", "-")) or not raw:
        assert HASHED.search(name)
    if not HASHED.search(name):
        assert name == raw and "~" not in name


@given(st.text(max_size=20), st.text(max_size=20))
def test_property_distinct_ids_do_not_collide(first: str, second: str) -> None:
    assume(unicodedata.normalize("NFC", first) != unicodedata.normalize("NFC", second))
    assert sanitize_patient_id(first) != sanitize_patient_id(second)


@given(st.text(alphabet=st.sampled_from("ab1_-./ "), min_size=1, max_size=8))
def test_property_hash_free_names_are_fixed_points(raw: str) -> None:
    name = sanitize_patient_id(raw)
    if "~" not in name:
        assert sanitize_patient_id(name) == name


@pytest.mark.parametrize(
    "parts",
    [
        ("..",),
        ("../x",),
        ("a", "..", ".."),
        ("/etc/passwd",),
        ("a/../../x",),
        (".",),
        ("",),
        ("a\x00",),
    ],
)
def test_safe_join_refuses_escapes(tmp_path: Path, parts: tuple[str, ...]) -> None:
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, *parts)


def test_safe_join_refuses_symlink_pointing_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        safe_join(root, "link")
    with pytest.raises(UnsafePathError):
        safe_join(root, "link", "PAT-1")


def test_safe_join_accepts_inside_paths(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "PAT-1") == tmp_path.resolve() / "PAT-1"
    assert safe_join(tmp_path, "PAT-1", "1.2.3") == tmp_path.resolve() / "PAT-1" / "1.2.3"
    assert safe_join(tmp_path, "a/../b") == tmp_path.resolve() / "b"
    assert issubclass(UnsafePathError, ValueError)
