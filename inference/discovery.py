"""Which files of a folder are DICOM inputs (names only: cheap enough for the API).

Kept apart from the pipeline so that the API can list a folder without importing
NumPy, OpenCV or the report code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def iter_dicom_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (recursively) whose name ends in ``.dcm``, any case, sorted.

    Folders whose names start with a dot are not entered (``.tmp``, ``.jobs`` and
    ``.locks`` of an output folder, ``.git``, OS metadata). Symbolic links are listed
    like files; whether they may be followed is the caller's policy.
    """
    if root.is_file():
        yield root
        return
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(".dcm"))
    yield from sorted(found)
