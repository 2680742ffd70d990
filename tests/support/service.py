"""Helpers shared by the service tests (processes, inputs, polling)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxr.stack import Child, stop_group
from workers.app import worker_command

#: The Redis server the tests use; each test module takes its own database number on it
#: and flushes it. ``CXR_TEST_REDIS`` points a run at another server (two checkouts
#: testing at once on one machine must not flush each other's databases).
TEST_REDIS = os.environ.get("CXR_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")


def free_ports(count: int) -> list[int]:
    """Ports the kernel had free just now (all held open together, so they differ)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def redis_db_url(db: str) -> str:
    """The URL of the test database named ``db`` in ``tests/conftest.py``'s ``REDIS_DBS``."""
    from tests.conftest import REDIS_DBS

    return f"{TEST_REDIS}/{REDIS_DBS[db]}"


REDIS_TEST_URL = redis_db_url("service")

SECRET = "test-secret-" + "x" * 40
ROOT = Path(__file__).resolve().parents[2]


def worker_env(redis_url: str = REDIS_TEST_URL, **extra: str) -> dict[str, str]:
    """A worker's environment. ``CXR_DATA_ROOTS`` defaults to the temporary directory every
    test's data lives under (a worker enforces its roots itself); a test that needs a
    narrower root (the session worker: the API's data root) passes it."""
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        TF_CPP_MIN_LOG_LEVEL="2",
        CXR_TF_THREADS="1",
        PYTHONPATH=str(ROOT),
        CXR_DATA_ROOTS=tempfile.gettempdir(),
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A ``celery worker`` subprocess; ``stop`` sends SIGTERM (warm shutdown), then SIGKILL."""

    def __init__(self, name: str, log: Path, env: dict[str, str], concurrency: int = 1) -> None:
        self.name = f"{name}@{os.uname().nodename}"
        self.log = log
        cmd = worker_command(concurrency, self.name, "--without-mingle", "--without-gossip")
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, app: Any, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-3000:]}")
            replies = app.control.ping(destination=[self.name], timeout=0.5) or []
            if any(self.name in reply for reply in replies):
                return
        raise RuntimeError(f"worker {self.name} not ready after {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_group(Child(self.name, self.proc, self.log))
        self.handle.close()


@contextmanager
def running_worker(name: str, app: Any, log: Path, env: dict[str, str]) -> Iterator[WorkerProcess]:
    """A worker that answers pings before the block starts, and is stopped after it."""
    worker = WorkerProcess(name, log, env)
    try:
        worker.wait_ready(app.extensions["cxr_celery"])
        yield worker
    finally:
        worker.stop()


def copy_inputs(src: Path, dest: Path, names: list[str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.dcm")):
        if names is None or f.name in names:
            shutil.copy(f, dest / f.name)
    return dest


def wait_for_job(client: Any, auth: dict[str, str], status_url: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(status_url, headers=auth).get_json()
        if body["Data"]["status"] in ("completed", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job at {status_url} did not finish in {timeout} s")
