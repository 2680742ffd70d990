"""The fuzz corpus (``tests/inference/fuzz_corpus.py``) through ``process_file``, in process.

Every file gets exactly the outcome the corpus names: broken files a skip with a known
reason code and a detail, hostile-but-valid files (patient ids with separators, NUL,
1,000 characters, dots, non-Latin) a distinct, safe folder directly under the output
root. No exception escapes, and nothing is written outside the output folder. The
same corpus runs as a real bulk job in ``tests/workers/test_hostile_input.py``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from engine.pipeline import process_file
from inference.dicom_load import DEFER_BYTES
from inference.dicom_read import read_dicom_image
from inference.errors import SKIP_REASONS, UnreadableDicom, UnsupportedImage
from tests.support.fuzz_corpus import (
    HOSTILE_PATIENT_IDS,
    PROCESSED,
    CorpusEntry,
    build_corpus,
    dataset_bytes,
    huge_header_dataset,
    valid_dataset,
)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) -> (size, mtime_ns) of a file or
    link; (0, 0) for a folder (its mtime moves with any entry added or removed, which
    the set of paths shows already)."""
    snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            is_dir = stat.S_ISDIR(info.st_mode)
            snapshot[os.path.relpath(path, root)] = (0, 0) if is_dir else (info.st_size, info.st_mtime_ns)
    return snapshot


def assert_only_output_changed(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], output: str
) -> None:
    changed = {p for p in after if before.get(p) != after[p]} | (set(before) - set(after))
    stray = sorted(p for p in changed if p != output and not p.startswith(output + os.sep))
    assert stray == [], f"written outside {output}: {stray}"


def assert_no_temp_leftovers(output: Path) -> None:
    staging = output / ".tmp"
    assert not staging.exists() or list(staging.iterdir()) == []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusEntry]]:
    base = tmp_path_factory.mktemp("fuzz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values it is asked to write
        entries = build_corpus(base / "in")
    return base, entries


def test_corpus_covers_every_kind_of_hostile_input(corpus: tuple[Path, list[CorpusEntry]]) -> None:
    _, entries = corpus
    assert 30 <= len(entries) <= 80
    kinds = {e.name.split("/")[0] for e in entries}
    assert kinds == {"bytes", "truncated", "header", "huge", "bomb", "blank", "nested", "charset", "ids", "valid"}
    assert {e.patient_id for e in entries if e.name.startswith("ids/")} == set(HOSTILE_PATIENT_IDS.values())
    assert {e.expect for e in entries} - {PROCESSED} <= set(SKIP_REASONS)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: invalid values it reads and tolerates
def test_every_corpus_file_gets_its_outcome_and_nothing_escapes(
    corpus: tuple[Path, list[CorpusEntry]], predictor: Any
) -> None:
    base, entries = corpus
    output = base / "out"
    output.mkdir()
    before = tree_snapshot(base)
    records = {}
    for entry in entries:
        records[entry.name] = process_file(base / "in" / entry.name, output, predictor, job_id="fuzz-job")

    outcomes = {name: r["status"] if r["status"] == PROCESSED else r["reason"] for name, r in records.items()}
    assert outcomes == {e.name: e.expect for e in entries}
    for entry in entries:
        record = records[entry.name]
        if record["status"] == PROCESSED:
            folder = Path(record["folder"])
            assert folder.parent == output.resolve(), record["folder"]
            assert folder.is_dir() and not folder.name.startswith(".")
        else:
            assert record["reason"] in SKIP_REASONS and record["detail"], record

    hostile = {e.name: Path(records[e.name]["folder"]).name for e in entries if e.name.startswith("ids/")}
    assert len(set(hostile.values())) == len(hostile), hostile  # distinct ids, distinct folders
    for name, folder in hostile.items():
        assert 0 < len(folder) <= 64 and len(folder.encode()) <= 128 and "\x00" not in folder, name
        assert folder not in (".", "..") and "/" not in folder and "\\" not in folder, name

    assert_only_output_changed(before, tree_snapshot(base), "out")
    assert_no_temp_leftovers(output)


def test_a_header_promising_terabytes_is_refused_before_the_pixels_are_read(tmp_path: Path) -> None:
    """65535 x 65535 x 3 samples x 1000 frames of 16 bits promised; 64 MiB actually
    present. The refusal comes from the header alone: the pixel bytes are never read
    into memory (peak traced allocation stays far below the file's size)."""
    ds = huge_header_dataset()
    ds.PixelData = b"\x00" * (64 << 20)
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(UnsupportedImage, match=r"\(0028,0010\) Rows 65535 is outside 1\.\.16384"):
            read_dicom_image(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"peak {peak / 2**20:.1f} MiB while refusing a 64 MiB file"
    assert elapsed < 5.0  # generous: the shared machine is noisy; the read itself takes ms


def test_large_native_pixel_data_is_read_later_and_identical(tmp_path: Path) -> None:
    """Pixel Data over ``DEFER_BYTES`` is left on disk by the header pass and read by the
    decoder: the result equals what a plain full read gives."""
    ds = valid_dataset(0)
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 4096, (1024, 1024), dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.tobytes()
    assert len(ds.PixelData) > DEFER_BYTES
    path = tmp_path / "big.dcm"
    path.write_bytes(dataset_bytes(ds))

    image = read_dicom_image(path)
    reference = pydicom.dcmread(path).pixel_array
    assert image.provenance["pixel_sha256"] == hashlib.sha256(reference.tobytes()).hexdigest()
    assert image.pixels.shape == (1024, 1024)

    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 1000])
    with pytest.raises(
        UnreadableDicom,
        match=r"truncated: \(7FE0,0010\) PixelData declares 2097152 bytes, "
        r"the file holds 2096152",
    ):
        read_dicom_image(cut)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Discovery refuses special files, but one can be swapped in after it: the reader
    checks again instead of blocking on ``open`` until the task's time limit."""
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableDicom, match=r"not a regular file"):
        read_dicom_image(fifo)
    with pytest.raises(UnreadableDicom, match=r"not a regular file"):
        read_dicom_image(tmp_path)
