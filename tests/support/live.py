"""The API as it is deployed: gunicorn (``api.gunicorn_conf``) on a free loopback port, a
real Celery worker, real Redis; for the tests that need real HTTP and real log files
(test_logs.py, test_load.py).

Every secret is distinctive (so a log line holding one is found by a plain substring
search), and the phantoms carry a distinctive PatientName and PatientID. Both API and
worker get the JWT secret and the Flower password in their environment, as they do when
an operator exports them before ``make run``. Logs: gunicorn's stdout (access log) and
stderr (its error log and the application's loggers) and the worker's log, each in its
own file.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import redis

from api import serve_command
from cxr.stack import Child, free_port, stop_group
from tests.support.service import ROOT, WorkerProcess, worker_env

#: Distinctive patient identity written into every phantom of a live service.
PATIENT_NAME = "Quokkafield^Zenobia Ottoline"
PATIENT_NAME_PARTS = ("Quokkafield", "Zenobia", "Ottoline")
PATIENT_ID = "PID-LIVE-4711"


@dataclass
class LiveService:
    url: str
    redis_url: str
    data: Path
    inputs: Path  # a folder of small phantoms, PatientName and PatientID as above
    logs: Path
    jwt_secret: str
    flower_password: str
    token: str
    worker: WorkerProcess
    redis: redis.Redis
    extra_tokens: list[str] = field(default_factory=list)

    def log_files(self) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8", errors="replace") for p in sorted(self.logs.glob("*.log"))}


def write_named_phantoms(folder: Path, count: int, size: int, seed: int) -> Path:
    from demo.phantom_dicom import write_phantoms

    write_phantoms(folder, count, seed=seed, size=size)
    (folder / "phantoms.json").unlink()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.save_as(path)
    return folder


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s: {log.read_text()[-3000:]}")


def warm_up(url: str, token: str, inputs: Path, timeout: float = 240.0) -> None:
    """One single inference: the worker's child loads the model on its first task (tens of
    seconds on a busy 2-core machine), which must not happen inside a measured window."""
    body = json.dumps({"input_image_path": str(min(inputs.glob("*.dcm"))), "save_to_disk": False}).encode()
    request = urllib.request.Request(
        url + "/single_inference",
        data=body,
        method="POST",
        headers={"Authorization": token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        assert resp.status == 200, resp.read()[:500]


@contextmanager
def live_service(
    tmp: Path,
    redis_url: str,
    *,
    api_workers: int = 2,
    api_threads: int = 8,
    phantoms: int = 3,
    phantom_size: int = 96,
    **api_env: str,
) -> Iterator[LiveService]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    data, logs = tmp / "data", tmp / "logs"
    logs.mkdir(parents=True)
    inputs = write_named_phantoms(data / "in", phantoms, phantom_size, seed=4711)
    jwt_secret = "jwt-" + secrets.token_hex(24)
    flower_password = "flower-" + secrets.token_hex(12)
    port = free_port()
    env = worker_env(
        redis_url,
        CXR_JWT_SECRET=jwt_secret,
        FLOWER_BASIC_AUTH=f"ops:{flower_password}",
        CXR_DATA_ROOTS=str(data),
        CXR_HOST="127.0.0.1",
        CXR_PORT=str(port),
        CXR_API_WORKERS=str(api_workers),
        CXR_API_THREADS=str(api_threads),
        CXR_SINGLE_WAIT_S="60",
        CXR_BULK_WAIT_S="60",
        CXR_POLL_INTERVAL_S="0.1",
        PYTHONUNBUFFERED="1",
        **api_env,
    )  # the access log is read while gunicorn runs
    from api import create_app
    from api.auth import issue_token

    token = issue_token(
        create_app({"REDIS_URL": redis_url, "CXR_JWT_SECRET": jwt_secret, "CXR_DATA_ROOTS": str(data)}), "live-test"
    )
    worker = WorkerProcess("live", logs / "worker.log", env)
    access, errors = (logs / "access.log").open("wb"), (logs / "api.log").open("wb")
    api = subprocess.Popen(
        serve_command(),
        cwd=ROOT,
        env=env,
        stdout=access,
        stderr=errors,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ping", api, logs / "api.log")
        from workers.app import create_celery_app

        worker.wait_ready(create_celery_app(redis_url))
        warm_up(url, token, inputs)
        yield LiveService(
            url=url,
            redis_url=redis_url,
            data=data,
            inputs=inputs,
            logs=logs,
            jwt_secret=jwt_secret,
            flower_password=flower_password,
            token=token,
            worker=worker,
            redis=client,
        )
    finally:
        worker.stop()
        stop_group(Child("api", api, logs / "api.log"))
        access.close()
        errors.close()
        client.flushdb()
        client.close()
