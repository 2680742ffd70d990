"""The per-process memory bound (``workers.memory``): parsed, set in every pool child, and
an image that does not fit is a skip while the process lives on.

The bound itself is tested in a plain Python child (no Celery: a limit set in the pytest
process would stay there); the session worker's pool child shows it was set by the
start-up hook.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.fuzz_corpus import dataset_bytes, valid_dataset
from tests.support.service import WorkerProcess
from workers.memory import DEFAULT_WORKER_MEMORY_MB, data_size_bytes, headroom_mb

ROOT = Path(__file__).resolve().parents[2]


def test_headroom_from_the_environment() -> None:
    assert headroom_mb({}) == DEFAULT_WORKER_MEMORY_MB == 3072
    assert headroom_mb({"CXR_WORKER_MEMORY_MB": " 512 "}) == 512
    assert headroom_mb({"CXR_WORKER_MEMORY_MB": "0"}) == 0  # no bound
    for raw in ("-1", "2G", "1.5"):
        with pytest.raises(ValueError, match=rf"CXR_WORKER_MEMORY_MB must be a whole number of MiB .*'{raw}'"):
            headroom_mb({"CXR_WORKER_MEMORY_MB": raw})


def test_data_size_is_read_from_proc() -> None:
    size = data_size_bytes()
    assert size is not None and 10 << 20 < size < 64 << 30
    assert data_size_bytes("/nonexistent/status") is None


_BOUNDED = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from workers.memory import limit_process_memory
from inference.dicom_read import read_dicom_image
from inference.errors import CxrError
limit = limit_process_memory(int(sys.argv[1]))
limits = [l for l in open("/proc/self/limits") if l.startswith("Max data size")][0].split()
outcomes = []
for path in sys.argv[2:]:
    try:
        outcomes.append(["processed", str(read_dicom_image(path).pixels.shape)])
    except CxrError as exc:
        outcomes.append([exc.reason, exc.detail])
print(json.dumps({"limit": limit, "soft": int(limits[3]), "outcomes": outcomes}))
"""


def test_an_image_over_the_bound_is_a_skip_and_the_process_reads_on(tmp_path: Path) -> None:
    """A 4096 x 4096 image (about 350 MB to decode and window) under a 150 MiB bound is an
    ``unsupported_image`` naming the bound; the 64 x 64 file after it is read normally."""
    big = valid_dataset(0)
    big.Rows = big.Columns = 4096
    big.BitsAllocated, big.BitsStored, big.HighBit = 16, 12, 11
    big.PixelData = np.random.default_rng(2).integers(0, 4096, (4096, 4096), dtype=np.uint16).tobytes()
    (tmp_path / "big.dcm").write_bytes(dataset_bytes(big))
    del big
    (tmp_path / "small.dcm").write_bytes(dataset_bytes(valid_dataset(1)))

    result = subprocess.run(
        [sys.executable, "-c", _BOUNDED, "150", str(tmp_path / "big.dcm"), str(tmp_path / "small.dcm")],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["soft"] == report["limit"]
    (reason, detail), small = report["outcomes"]
    assert reason == "unsupported_image"
    assert re.search(
        r"Rows 4096 x \(0028,0011\) Columns 4096: decoding and displaying the image needed more memory than this "
        r"process may use \(.*\); see CXR_WORKER_MEMORY_MB and CXR_MAX_PIXELS",
        detail,
    ), detail
    assert small == ["processed", "(64, 64)"]


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_every_pool_child_runs_under_the_bound(worker: WorkerProcess) -> None:
    """The session worker (default CXR_WORKER_MEMORY_MB) logs the bound of its child, and the
    child's RLIMIT_DATA is its data size once the model loaded plus 3072 MiB."""
    deadline = time.monotonic() + 90
    logged = None
    while logged is None and time.monotonic() < deadline:
        logged = re.search(r"process (\d+): RLIMIT_DATA (\d+) MiB \(3072 MiB above the loaded model\)", _log(worker))
        time.sleep(0.2)
    assert logged, _log(worker)[-3000:]
    child, limit_mib = int(logged.group(1)), int(logged.group(2))
    assert child in _children(worker.proc.pid)
    line = next(row for row in Path(f"/proc/{child}/limits").read_text().splitlines() if row.startswith("Max data"))
    soft = int(line.split()[3])
    assert soft >> 20 == limit_mib
    assert limit_mib > 3072 + 100  # the loaded model (0.5 GB of data on CPU) below the headroom


def _log(worker: WorkerProcess) -> str:
    return worker.log.read_text(errors="replace")
