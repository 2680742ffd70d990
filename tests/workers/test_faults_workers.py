"""Worker faults during a bulk job: killed pool processes, a killed worker, a poison file, SIGTERM.

Real ``celery worker`` processes on Redis database 10, real DICOM phantoms (128 px, so
a file costs a fraction of a second), the API through Flask's test client. The faults
are done from outside, as the operating system would do them: SIGKILL of a pool
process (what an out-of-memory kill or a segfault does), SIGKILL of a worker's whole
process group (a host lost), SIGTERM of a worker's main process (a deploy stopping it).
The tasks to hit are found with ``inspect().active()``, which names the process
running each task; nothing in the production code knows about the test.

The workers run with a 15 s visibility timeout so that the files of the killed worker
come back within seconds (production: an hour; see ``celeryconfig``). Not less: a message
a worker has taken while its killed pool process is being replaced (TensorFlow, the model
and the fonts load again: 4-5 s on a busy 2-core machine) must not reach the timeout, or
Redis hands it to a second worker and that delivery counts as one more death.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.faults import TaskKiller, assert_published_once
from tests.support.service import (
    SECRET,
    WorkerProcess,
    redis_db_url,
    wait_for_job,
    worker_env,
)

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

FAULTS_DB_URL = redis_db_url("faults_workers")
MAX_DELIVERIES = 3
log = logging.getLogger(__name__)
WORKER_SETTINGS = {
    "CXR_VISIBILITY_TIMEOUT_S": "15",
    "CXR_MAX_DELIVERIES": str(MAX_DELIVERIES),
    "CXR_WATCHDOG_INTERVAL_S": "2",
    "CXR_STALL_GRACE_S": "120",
}


@pytest.fixture(scope="module")
def faults_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    from api import create_app

    root = tmp_path_factory.mktemp("faults-workers")
    client = redis.Redis.from_url(FAULTS_DB_URL)
    client.flushdb()
    app = create_app(
        {
            "REDIS_URL": FAULTS_DB_URL,
            "CXR_JWT_SECRET": SECRET,
            "CXR_DATA_ROOTS": str(root),
            "CXR_BULK_WAIT_S": 0.0,
            "CXR_SINGLE_WAIT_S": 60.0,
            "CXR_POLL_INTERVAL_S": 0.1,
        }
    )
    try:
        yield app, root
    finally:
        client.flushdb()


@pytest.fixture(scope="module")
def workers(faults_app: tuple[Any, Path]) -> Iterator[dict[str, WorkerProcess]]:
    """Three workers for the module, started together (their TensorFlow imports overlap).

    The kill test kills one of them whole, the SIGTERM test stops another; each test
    works with the ones still alive.
    """
    app, root = faults_app
    with ExitStack() as stack:
        started = {}
        for name in ("faults-a", "faults-b", "faults-c"):
            w = WorkerProcess(name, root / f"{name}.log", worker_env(FAULTS_DB_URL, **WORKER_SETTINGS))
            stack.callback(w.stop)
            started[w.name] = w
        for w in started.values():
            w.wait_ready(app.extensions["cxr_celery"])
        yield started


def _alive(workers: dict[str, WorkerProcess]) -> list[WorkerProcess]:
    return [w for w in workers.values() if w.proc.poll() is None]


def _submit(app: Any, inp: Path, out: Path) -> tuple[str, str, dict[str, str]]:
    from api.auth import issue_token

    auth = {"Authorization": issue_token(app, "faults")}
    response = app.test_client().post(
        "/bulk_inference",
        headers=auth,
        json={"input_folder_path": str(inp), "output_folder_path": str(out), "wait": False},
    )
    assert response.status_code == 202, response.get_json()
    data = response.get_json()["Data"]
    return data["job_id"], data["status_url"], auth


def _index(task_id: str) -> int | None:
    tail = task_id.rpartition("-")[2]
    return int(tail) if tail.isdigit() else None


def test_a_job_survives_killed_processes_a_killed_worker_and_a_poison_file(
    faults_app: tuple[Any, Path], workers: dict[str, WorkerProcess]
) -> None:
    """100 files, three workers. During the job: file 20 kills its process every time it runs
    (a poison file), file 40's process is killed once, and the worker running file 60
    is killed whole (its file comes back after the visibility timeout). The job completes; file 20 is skipped as
    ``worker_lost`` after exactly MAX_DELIVERIES deaths; the 99 others are each
    published exactly once, killed ones included."""
    from demo.phantom_dicom import write_phantoms

    app, root = faults_app
    inp, out = root / "kill-in", root / "kill-out"
    poison, victim, whole = 20, 40, 60
    write_phantoms(inp, 100, seed=4242, size=128)
    # The files to hit are large, so that the process named by ``inspect`` (a 0.3 s round
    # trip) is still on them when the signal arrives: a 128-px file is done by then, and
    # since the reports got faster so is a 1024-px JPEG 2000 one (0.3-0.5 s). A 3072-px
    # JPEG 2000 file takes 1-2 s. The poison file must be caught on each of its three
    # deliveries, so it is larger still (4096 px, seconds); it is never processed to the end.
    write_phantoms(inp, 1, seed=4242, size=4096, start=poison, compression="j2k")
    for index in (victim, whole):
        write_phantoms(inp, 1, seed=4242, size=3072, start=index, compression="j2k")
    inputs = sorted(inp.glob("*.dcm"))
    assert len(_alive(workers)) >= 2
    with ExitStack() as stack:
        job_id, status_url, auth = _submit(app, inp, out)
        state = {"victim": False, "worker": None}

        def decide(task_id: str, worker: str, pid: int) -> str | None:
            if not task_id.startswith(job_id):
                return None
            index = _index(task_id)
            if index == poison and sum(k[0] == task_id for k in killer.kills) < MAX_DELIVERIES:
                return "child"  # the file kills its process every time it is processed
            if index == victim and not state["victim"]:
                state["victim"] = True
                return "child"
            if index == whole and state["worker"] is None:
                state["worker"] = task_id
                return "worker"
            return None

        def kill_worker(name: str) -> None:
            os.killpg(workers[name].proc.pid, signal.SIGKILL)

        killer = TaskKiller(app.extensions["cxr_celery"], decide, kill_worker)
        killer.start()
        stack.callback(killer.stop)
        started = time.monotonic()
        try:
            body = wait_for_job(app.test_client(), auth, status_url, timeout=180)
        except AssertionError:
            raw = redis.Redis.from_url(FAULTS_DB_URL)
            raise AssertionError(
                f"job stuck; kills {killer.kills}; unacked {raw.hkeys('unacked')}, "
                f"mutex ttl {raw.ttl('unacked_mutex')}, queue {raw.llen('inference')}, "
                f"recorded {sorted(int(i) for i in raw.hkeys(f'cxr:job:{job_id}:files'))}"
            ) from None

    log.info("100-file job with %d kills finished in %.1f s", len(killer.kills), time.monotonic() - started)
    summary = body["Data"]
    kinds = [(_index(task_id), kind) for task_id, _, kind in killer.kills]
    assert kinds.count((poison, "child")) == MAX_DELIVERIES
    assert (victim, "child") in kinds
    assert state["worker"] is not None and (_index(state["worker"]), "worker") in kinds
    assert summary["status"] == "completed", summary
    assert summary["processed"] == 99
    [skip] = summary["skipped"]
    assert skip == {
        "path": str(inputs[poison]),
        "reason": "worker_lost",
        "detail": f"the worker process died {MAX_DELIVERIES} times while processing this file; given up",
    }
    # The killed files were processed after all, by a later delivery.
    assert str(inputs[victim]) in summary["outputs"]
    assert str(inputs[whole]) in summary["outputs"]
    assert_published_once(out, summary, inputs, job_id)


def test_sigterm_lets_a_worker_finish_its_file_and_the_job_completes(
    faults_app: tuple[Any, Path], workers: dict[str, WorkerProcess]
) -> None:
    """SIGTERM to a worker's main process while it processes a file: warm shutdown, the
    file is finished by that worker (its log says the task succeeded), the worker exits
    cleanly, and the other worker completes the job; every file is published once."""
    from demo.phantom_dicom import write_phantoms

    app, root = faults_app
    inp, out = root / "term-in", root / "term-out"
    write_phantoms(inp, 8, seed=4343, size=1024, compression="j2k")  # about a second each: SIGTERM lands mid-file
    inputs = sorted(inp.glob("*.dcm"))
    alive = _alive(workers)
    assert len(alive) >= 2
    stopping = alive[0]
    job_id, status_url, auth = _submit(app, inp, out)
    inspect = app.extensions["cxr_celery"].control.inspect(destination=[stopping.name], timeout=0.5)
    running: str | None = None
    deadline = time.monotonic() + 60
    while running is None and time.monotonic() < deadline:
        for task in (inspect.active() or {}).get(stopping.name, []):
            if task["id"].startswith(job_id):
                running = task["id"]
        time.sleep(0.02)
    assert running is not None, "the worker never ran a file of the job"
    stopping.proc.send_signal(signal.SIGTERM)
    assert stopping.proc.wait(60) == 0  # warm shutdown: finished its file, then exited
    body = wait_for_job(app.test_client(), auth, status_url, timeout=120)
    summary = body["Data"]
    log = stopping.log.read_text()
    assert f"Task cxr.infer_file[{running}] succeeded" in log
    assert summary["status"] == "completed" and summary["processed"] == 8 and summary["skipped"] == []
    assert_published_once(out, summary, inputs, job_id)


def test_single_inference_whose_process_dies_answers_500_at_once(
    faults_app: tuple[Any, Path], workers: dict[str, WorkerProcess]
) -> None:
    """Single inference is not redelivered (no delivery cap protects it): the client gets
    the internal-error 500 as soon as the process dies, not after its whole wait."""
    from api.auth import issue_token
    from demo.phantom_dicom import write_phantoms

    app, root = faults_app
    assert _alive(workers)
    inp = root / "single-in"
    write_phantoms(inp, 1, seed=4444, size=4096, compression="j2k")  # about 2 s: the kill lands mid-file
    killer = TaskKiller(
        app.extensions["cxr_celery"],
        lambda task_id, worker, pid: "child" if task_id.startswith("single-") else None,
        lambda name: None,
    )
    killer.start()
    try:
        started = time.monotonic()
        response = app.test_client().post(
            "/single_inference",
            headers={"Authorization": issue_token(app, "s")},
            json={"input_image_path": str(next(inp.glob("*.dcm"))), "output_folder_path": str(root / "single-out")},
        )
        elapsed = time.monotonic() - started
    finally:
        killer.stop()
    assert [kind for _, _, kind in killer.kills] == ["child"]
    assert response.status_code == 500
    assert response.get_json()["Message"] == "Single Inference failed due to an internal error"
    assert elapsed < 30  # the wait limit is 60 s; a redelivered task would run (and die) again
    assert (
        not (root / "single-out").exists()
        or [p.name for p in (root / "single-out").iterdir() if not p.name.startswith(".")] == []
    )
