"""GPU start-up (``workers/gpu.py``): which GPU each worker process takes, and what it logs.

No GPU exists where these tests run. The choice of device is a pure function, tested
as a table; the workers' container entrypoint, run for real with two GPU ids, shows
that it starts a process per GPU, that each child pins the GPU of its own pool index
before TensorFlow starts, and that the log says it runs on the CPU here.
Redis: database 4 on the test server (flushed at start and end).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cxr.stack import Child, stop_group
from tests.support.service import ROOT, redis_db_url, worker_env
from workers.gpu import default_concurrency, device_for_process, visible_gpu_ids

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

REDIS_URL = redis_db_url("gpu")


@pytest.mark.parametrize(
    ("cuda_visible", "nodes", "expected"),
    [
        (None, [], []),  # no GPU at all
        (None, ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"], ["0", "1"]),
        (None, ["nvidia2", "nvidia3", "nvidiactl"], ["0", "1"]),  # a container given host GPUs 2 and 3
        ("2,3", ["nvidia0", "nvidia1", "nvidia2", "nvidia3"], ["2", "3"]),  # the worker's own setting wins
        (" 1 , 0 ", [], ["1", "0"]),
        ("GPU-8f1c2a,GPU-77aa01", [], ["GPU-8f1c2a", "GPU-77aa01"]),  # UUIDs pass through
        ("", ["nvidia0"], []),  # empty hides every GPU
        ("-1", ["nvidia0"], []),
        ("0,-1,1", [], ["0"]),  # CUDA stops at an invalid entry
    ],
)
def test_visible_gpu_ids(cuda_visible: str | None, nodes: list[str], expected: list[str]) -> None:
    environ = {} if cuda_visible is None else {"CUDA_VISIBLE_DEVICES": cuda_visible}
    assert visible_gpu_ids(environ, nodes) == expected


@pytest.mark.parametrize(
    ("gpu_ids", "index", "expected"),
    [
        (["0", "1", "2", "3"], 0, "0"),
        (["0", "1", "2", "3"], 3, "3"),
        (["2", "3"], 1, "3"),
        (["2", "3"], 2, "2"),  # more processes than GPUs: round-robin, cards shared
        (["0"], 5, "0"),
        ([], 0, None),  # no GPU: the CPU
        (["0", "1"], None, None),  # not a pool process: leave the environment alone
    ],
)
def test_device_for_process(gpu_ids: list[str], index: int | None, expected: str | None) -> None:
    assert device_for_process(gpu_ids, index) == expected


@pytest.mark.parametrize(
    ("environ", "gpus", "cores", "expected"),
    [
        ({}, ["0", "1", "2", "3"], 32, 4),  # one process per GPU
        ({}, [], 16, 16),  # CPU host: one per core
        ({}, [], 0, 1),
        ({"CXR_WORKER_CONCURRENCY": "2"}, ["0", "1", "2", "3"], 32, 2),
        ({"CXR_WORKER_CONCURRENCY": " "}, ["0"], 8, 1),  # blank is unset (compose passes "")
    ],
)
def test_default_concurrency(environ: dict[str, str], gpus: list[str], cores: int, expected: int) -> None:
    assert default_concurrency(environ, gpus, cores) == expected


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_default_concurrency_refuses_nonsense(bad: str) -> None:
    with pytest.raises(ValueError):
        default_concurrency({"CXR_WORKER_CONCURRENCY": bad}, [], 4)


@pytest.fixture()
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def wait_for_lines(
    log: Path, pattern: str, count: int, proc: subprocess.Popen[bytes], timeout: float = 90.0
) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = re.findall(pattern, log.read_text(errors="replace"))
        if len(lines) >= count:
            return lines
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"{count} x {pattern!r} not in the worker log:\n{log.read_text()[-3000:]}")


def test_worker_entrypoint_runs_one_process_per_gpu_each_pinned_and_logs_cpu_here(
    redis_db: redis.Redis, tmp_path: Path
) -> None:
    """``docker/worker.sh`` (the images' ``cxr-worker``) as a container runs it, told of two
    GPUs: it starts two processes (no CXR_WORKER_CONCURRENCY), process i pins GPU i, and
    with no GPU here (TensorFlow's CPU build) each logs that it runs on the CPU, under
    the mixed precision policy that CXR_MIXED_PRECISION asked for."""
    log = tmp_path / "worker.log"
    env = worker_env(
        REDIS_URL,
        CUDA_VISIBLE_DEVICES="0,1",
        CXR_MIXED_PRECISION="1",
        CXR_WORKER_NAME="gpu-test",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("CXR_WORKER_CONCURRENCY", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "docker/worker.sh"), "--without-mingle", "--without-gossip"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            pinned = wait_for_lines(log, r"pool process (\d): GPU (\d) of 0,1", 2, proc)
            runs = wait_for_lines(log, r"runs on (\S+) \(CUDA_VISIBLE_DEVICES=(\d), Keras policy (\w+)\)", 2, proc)
        finally:
            stop_group(Child("gpu-test", proc, log))
    assert sorted(pinned) == [("0", "0"), ("1", "1")]
    assert sorted(runs) == [("CPU", "0", "mixed_float16"), ("CPU", "1", "mixed_float16")]
    assert re.search(r"gpu-test@\S+ v\d", log.read_text()), "the node is named CXR_WORKER_NAME@hostname"
    assert "concurrency: 2 (prefork)" in log.read_text()
