"""Helpers of the fault tests: a private redis-server, a killer of chosen tasks, output checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cxr.stack import free_port
from reports.publish import ARTIFACT_SUFFIXES


class PrivateRedis:
    """A ``redis-server`` of the test's own, on a free port, that the test may stop and restart."""

    def __init__(self, workdir: Path, *, appendonly: bool) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed; the Redis fault tests need it")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        self.proc = subprocess.Popen(argv, stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    # An AOF being replayed answers LOADING until it is done.
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start: {(self.dir / 'redis.log').read_text()}")

    def stop(self) -> None:
        """Stop at once (SIGKILL: whatever was not persisted is lost, as in a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@contextmanager
def private_redis(workdir: Path, *, appendonly: bool) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class TaskKiller:
    """SIGKILLs the pool process running chosen tasks, found with ``inspect().active()``.

    Nothing in the production code knows about it: it does from outside what an
    out-of-memory kill or a segfault does to a worker process.
    ``decide(task_id, worker_name, pid)`` returns ``"child"`` (kill that process),
    ``"worker"`` (kill the whole worker: the callback ``kill_worker(name)``) or None.
    """

    celery: Any
    decide: Callable[[str, str, int], str | None]
    kill_worker: Callable[[str], None]
    kills: list[tuple[str, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _killed_pids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        inspect = self.celery.control.inspect(timeout=0.3)
        while not self._stop.is_set():
            for worker, tasks in (inspect.active() or {}).items():
                for task in tasks or []:
                    pid = int(task.get("worker_pid") or 0)
                    if not pid or pid in self._killed_pids:
                        continue
                    action = self.decide(task["id"], worker, pid)
                    if action == "child":
                        self._killed_pids.add(pid)
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            continue  # finished and gone before the signal: not a kill
                        self.kills.append((task["id"], worker, "child"))
                    elif action == "worker":
                        self._killed_pids.add(pid)
                        self.kill_worker(worker)
                        self.kills.append((task["id"], worker, "worker"))
            time.sleep(0.05)


def assert_published_once(out: Path, summary: dict[str, Any], inputs: list[Path], job_id: str) -> None:
    """Every processed input has exactly one whole patient folder of this job, and nothing
    else is in the output folder: no second folder, no staging leftovers."""
    outputs = summary["outputs"]
    skipped = {s["path"] for s in summary["skipped"]}
    assert len(outputs) + len(summary["skipped"]) == len(inputs) == summary["total"]
    assert set(outputs) | skipped == {str(p) for p in inputs}
    assert summary["superseded"] == []
    folders = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert sorted(Path(f) for f in outputs.values()) == folders  # one folder per processed file
    for source, folder in outputs.items():
        folder_path = Path(folder)
        name = folder_path.name
        artifacts = sorted(name + s for s in ARTIFACT_SUFFIXES.values())
        assert sorted(p.name for p in folder_path.iterdir()) == sorted([".cxr-engine", *artifacts])
        doc = json.loads((folder_path / f"{name}_predictions.json").read_text())
        assert doc["source"]["path"] == source
        assert doc["publication"]["job_id"] == job_id
        assert (folder_path / f"{name}_report.pdf").read_bytes().startswith(b"%PDF-")
    temp = out / ".tmp"
    assert not temp.exists() or list(temp.iterdir()) == []
