"""Shared fixtures: the demo bundle, one Predictor per session, small phantom files.

TensorFlow is configured for 2 threads before any test touches it, and the model is
loaded once per session: loading it per test would dominate the run on 2 cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CXR_TF_THREADS", "2")

#: Phantom files in tests are small: a 2k image costs seconds to write and read.
PHANTOM_TEST_SIZE = 384


@pytest.fixture(scope="session")
def demo_bundle_dir() -> Path:
    from inference.bundle import DEFAULT_BUNDLE_DIR

    assert (DEFAULT_BUNDLE_DIR / "manifest.json").is_file(), "demo bundle missing: run `make train`"
    return DEFAULT_BUNDLE_DIR


@pytest.fixture(scope="session")
def predictor(demo_bundle_dir: Path):
    from inference.bundle import read_bundle
    from inference.predict import Predictor, configure_tensorflow

    configure_tensorflow()
    return Predictor(read_bundle(demo_bundle_dir))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small phantom DICOM files (every storage variant) plus phantoms.json."""
    from inference.phantom_dicom import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, 8, seed=4242, size=PHANTOM_TEST_SIZE)
    return out
