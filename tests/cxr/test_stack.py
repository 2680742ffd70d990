"""``python -m cxr.stack`` as ``make run`` starts it: the whole stack as real processes.

The launcher is run as a user would: its banner is read from stdout, the curl line it
prints is executed as printed, Flower is asked with and without the printed password
(and with wrong ones, on its UI and API), after SIGTERM nothing it started may still
run or listen, and no log it wrote holds the JWT secret, a token, the Flower password
or a demo patient's name. The stack runs on the private Redis that ``make run`` starts
when none is configured (``CXR_RUN_PRIVATE_REDIS=1``: even if one answers on 6379), which
must refuse clients without the password generated for the run, listen on 127.0.0.1
only, and have that password in no printed line, log or command line (issue 15, item 2).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import pytest
import redis

from cxr.stack import StackError, flower_auth, masked_url
from tests.support.service import free_ports

pytestmark = pytest.mark.service  # starts its own worker, API or Redis processes

ROOT = Path(__file__).resolve().parents[2]
BANNER_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 40.0


def free_port_pair(taken: list[int]) -> int:
    """A port that is free with the next one too, neither in ``taken`` (make run's metrics:
    the API's port and the worker's, the next one)."""
    for _ in range(100):
        (port,) = free_ports(1)
        if port + 1 in taken or port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports found")


def http_status(url: str, auth: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def flower_json(url: str, auth: str) -> dict[str, dict[str, object]]:
    """Flower's JSON API, with basic auth; waits up to 10 s for it to have heard of tasks."""
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            found: dict[str, dict[str, object]] = json.loads(resp.read())
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def leftovers(marks: list[str]) -> dict[int, str]:
    """Processes (not this one) whose command line or environment holds any of ``marks``."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if any(mark in cmdline or mark in environ for mark in marks):
            found[int(entry.name)] = cmdline.strip()
    return found


def banner_api(text: str) -> str:
    match = re.search(r"API:\s+(\S+)", text)
    assert match, f"no API line in\n{text}"
    return match.group(1)


@pytest.mark.parametrize(
    "value", ["admin", "admin:", "admin:short", ":longenoughpassword", "ops:longenoughpassword,admin:"]
)
def test_flower_never_starts_with_weak_or_no_credentials(value: str) -> None:
    with pytest.raises(StackError, match="FLOWER_BASIC_AUTH"):
        flower_auth({"FLOWER_BASIC_AUTH": value})


def test_flower_credentials_are_generated_or_taken_as_given() -> None:
    user, _, password = flower_auth({}).partition(":")
    assert user == "admin" and len(password) >= 16
    assert flower_auth({"FLOWER_BASIC_AUTH": ""}) != flower_auth({"FLOWER_BASIC_AUTH": ""})  # per run
    assert flower_auth({"FLOWER_BASIC_AUTH": "ops:longenoughpassword"}) == "ops:longenoughpassword"


def test_a_redis_password_stays_out_of_the_launchers_log(tmp_path: Path) -> None:
    url = f"redis://:launcher-pw-{os.getpid()}@127.0.0.1:{free_ports(1)[0]}/0"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "cxr.stack", "--var", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, REDIS_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "does not answer PING" in done.stderr
    assert f"launcher-pw-{os.getpid()}" not in done.stdout + done.stderr


def test_make_run_starts_the_stack_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    api_port, flower_port, dicom_port = free_ports(3)
    metrics_port = free_port_pair([api_port, flower_port, dicom_port])  # the API's; the worker's is the next
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "CXR_JWT_SECRET",
            "CXR_JWT_SECRET_FILE",
            "CXR_DATA_ROOTS",
            "FLOWER_BASIC_AUTH",
            "CXR_HOST",
            "CXR_VAR_DIR",
            "REDIS_URL",
            "CELERY_BROKER_URL",
        )
    }
    env.update(
        CXR_RUN_PRIVATE_REDIS="1",
        CXR_PORT=str(api_port),
        FLOWER_PORT=str(flower_port),
        CXR_DICOM_PORT=str(dicom_port),
        CXR_WORKER_CONCURRENCY="1",
        CXR_API_WORKERS="1",
        CXR_TF_THREADS="1",
        PYTHONUNBUFFERED="1",
        CXR_METRICS_PORT=str(metrics_port),
    )
    stderr_path = tmp_path / "launcher.stderr"
    marks = [str(tmp_path), f"127.0.0.1:{api_port}", f"--port={flower_port}"]
    lines: queue.Queue[str | None] = queue.Queue()
    started = time.monotonic()

    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr.stack", "--var", str(tmp_path), "--demo-size", "256"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def diagnostics() -> str:
        logs = "".join(
            f"\n--- {p.name} (tail) ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted((tmp_path / "run" / "logs").glob("*.log"))
        )
        return f"\n--- launcher stderr ---\n{stderr_path.read_text(errors='replace')}{logs}"

    try:
        # 1. The banner: everything between the two rules, read within the time limit.
        banner: list[str] = []
        rules = 0
        deadline = time.monotonic() + BANNER_TIMEOUT_S
        while rules < 2:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"step 1 (banner): not complete after {BANNER_TIMEOUT_S:.0f} s; got {banner}{diagnostics()}"
                ) from None
            assert line is not None, f"step 1 (banner): launcher exited {proc.wait()} first{diagnostics()}"
            rules += line.startswith("====")
            banner.append(line)
        text = "\n".join(banner)
        assert "NOT FOR CLINICAL USE" in text, f"step 1 (banner): no clinical-use warning in\n{text}"
        assert f"CXR_JWT_SECRET_FILE={tmp_path / 'run' / 'jwt-secret'}" in text, (
            f"step 1 (banner): the token command does not name the generated secret\n{text}"
        )
        assert (tmp_path / "run" / "jwt-secret").stat().st_mode & 0o777 == 0o600, "step 1: jwt-secret is not 0600"

        # 2. The curl line, run exactly as printed.
        curl = [line for line in banner if line.startswith("curl ")]
        assert len(curl) == 1, f"step 2 (curl): expected one curl line in\n{text}"
        done = subprocess.run(shlex.split(curl[0]), capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"step 2 (curl): exit {done.returncode}: {done.stderr}{diagnostics()}"
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"step 2 (curl): not JSON: {done.stdout!r}{diagnostics()}") from None
        assert answer["Result"] == "Success", f"step 2 (curl): {answer}{diagnostics()}"
        assert answer["Data"]["status"] == "completed", f"step 2 (curl): {answer}"
        assert answer["Data"]["processed"] == 6, f"step 2 (curl): {answer}"

        # 3. Flower: refused without the printed credentials, served with them.
        match = re.search(r"Flower:\s+(\S+)\s+user (\S+), password (\S+)", text)
        assert match, f"step 3 (flower): no Flower line in\n{text}"
        flower_url, user, password = match.groups()
        assert http_status(flower_url + "/") == 401, "step 3 (flower): answered without credentials"
        for path in ("/", "/api/workers", "/api/tasks", "/tasks"):
            for wrong in (None, f"{user}:", f"{user}:{password}x", f"other:{password}"):
                assert http_status(flower_url + path, wrong) == 401, f"step 3 (flower): {path} answered {wrong!r}"
        assert http_status(flower_url + "/", f"{user}:{password}") == 200, (
            f"step 3 (flower): printed credentials refused{diagnostics()}"
        )

        # 3b. The private Redis: a password made for this run, loopback only, printed nowhere.
        shown = re.search(r"Redis:\s+redis://(?:[^@\s]*@)?127\.0\.0\.1:(\d+)/0 \(private", text)
        assert shown, f"step 3b (redis): no private Redis in the banner\n{text}"
        with pytest.raises(redis.AuthenticationError):  # NOAUTH: the workers' queue is not open to any local user
            redis.Redis(host="127.0.0.1", port=int(shown.group(1)), socket_timeout=5).ping()
        url_file = tmp_path / "run" / "redis-url"
        assert url_file.stat().st_mode & 0o777 == 0o600, "step 3b (redis): redis-url is not 0600"
        redis_url = url_file.read_text().strip()
        parts = urlsplit(redis_url)
        redis_password, redis_port = parts.password or "", int(parts.port or 0)
        marks.append(f"127.0.0.1:{redis_port}")
        assert len(redis_password) >= 24 and parts.hostname == "127.0.0.1", f"step 3b (redis): {masked_url(redis_url)}"
        assert redis_port == int(shown.group(1))
        private = redis.Redis.from_url(redis_url, socket_timeout=5)
        assert private.config_get("bind") == {"bind": "127.0.0.1"}, "step 3b (redis): not on loopback only"
        private.close()
        assert f"Redis:   redis://:***@127.0.0.1:{redis_port}/0 (private" in text, f"step 3b (redis):\n{text}"
        assert redis_password not in text, "step 3b (redis): the banner shows the Redis password"
        on_command_lines = [cmd for cmd in leftovers([str(tmp_path)]).values() if redis_password in cmd]
        assert not on_command_lines, f"step 3b (redis): password on a command line: {on_command_lines}"
        # The banner's token command works as printed (it reads the URL from the file).
        token_line = next(line for line in banner if line.strip().startswith("Token:"))
        issued = subprocess.run(
            ["bash", "-c", token_line.split("Token:", 1)[1].strip()],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert issued.returncode == 0, f"step 3b (token): {issued.stderr}"
        health = urllib.request.Request(banner_api(text) + "/health", headers={"Authorization": issued.stdout.strip()})
        with urllib.request.urlopen(health, timeout=30) as resp:
            assert resp.status == 200, "step 3b (token): the printed token command's token was refused"

        # A single inference too: its answer carries the patient's name, which no log may.
        token = next(
            arg.removeprefix("Authorization: ") for arg in shlex.split(curl[0]) if arg.startswith("Authorization: ")
        )
        demo_file = min((tmp_path / "demo-input").glob("*.dcm"))
        request = urllib.request.Request(
            banner_api(text) + "/single_inference",
            method="POST",
            data=json.dumps({"input_image_path": str(demo_file), "save_to_disk": False}).encode(),
            headers={"Authorization": token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as resp:
            single = json.loads(resp.read())
        assert single["Data"]["metadata"]["patient_name"] == str(pydicom.dcmread(demo_file).PatientName)

        # 3c. What Flower itself serves of those tasks (its task list: arguments, results) names no patient.
        flower_tasks = flower_json(flower_url + "/api/tasks", f"{user}:{password}")
        kinds = {t.get("name") for t in flower_tasks.values()}
        assert {"cxr.infer_file", "cxr.infer_single"} <= kinds, f"step 3c (flower): tasks seen {kinds}"
        listed = json.dumps(flower_tasks)
        demo_names = {str(pydicom.dcmread(f).PatientName) for f in (tmp_path / "demo-input").glob("*.dcm")}
        shown = [
            value
            for value in [str(tmp_path / "demo-input"), "iVBORw0KGgo", "JVBERi0", *demo_names]
            if value and value in listed
        ]
        assert not shown, f"step 3c (flower): Flower's task list shows {shown}"
        # The DICOM node: announced, and answering a C-ECHO where the banner says.
        assert f"DICOM:   AE CXR_ENGINE on 127.0.0.1:{dicom_port}" in text, f"no DICOM node line in\n{text}"
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        echo = AE(ae_title="STACKTEST")
        echo.add_requested_context(Verification)
        assoc = echo.associate("127.0.0.1", dicom_port, ae_title="CXR_ENGINE")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0, f"C-ECHO failed{diagnostics()}"
        assoc.release()
        # 3b. The metrics the banner points at: the API's and the worker's, each on its port.
        assert f"Metrics: http://127.0.0.1:{metrics_port}/metrics (API)" in text, text
        for port, name in ((metrics_port, "cxr_api_requests_total"), (metrics_port + 1, "cxr_files_processed_total")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                assert name in resp.read().decode(), f"step 3b (metrics): no {name} on port {port}"

        # 4. SIGTERM: the launcher stops everything and exits 0.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"step 4 (stop): still running {STOP_TIMEOUT_S:.0f} s after SIGTERM{diagnostics()}"
            ) from None
        assert code == 0, f"step 4 (stop): exit status {code}{diagnostics()}"
        assert refuses(api_port), f"step 4 (stop): API port {api_port} still accepts connections"
        assert refuses(flower_port), f"step 4 (stop): Flower port {flower_port} still accepts connections"
        assert refuses(redis_port), f"step 4 (stop): the private Redis on {redis_port} still accepts connections"
        assert refuses(dicom_port), f"step 4 (stop): DICOM port {dicom_port} still accepts connections"
        left = leftovers(marks)
        assert not left, f"step 4 (stop): processes left behind: {left}"

        # 5. No log holds the JWT secret, a token, the Flower password or a patient's name.
        logs = {
            p.name: p.read_text(encoding="utf-8", errors="replace")
            for p in sorted((tmp_path / "run" / "logs").glob("*.log"))
        }
        assert {"api.log", "worker.log", "flower.log", "dicom-node.log"} <= set(logs), f"step 5 (logs): {sorted(logs)}"
        assert "association from STACKTEST@127.0.0.1 released" in logs["dicom-node.log"], logs["dicom-node.log"]
        assert "POST /single_inference" in logs["api.log"], "step 5 (logs): no access log in api.log"
        names = {str(pydicom.dcmread(f).PatientName) for f in (tmp_path / "demo-input").glob("*.dcm")}
        parts = {part for name in names for part in re.split(r"[\^ ]", name) if len(part) >= 4}
        forbidden = {
            "JWT secret": (tmp_path / "run" / "jwt-secret").read_text().strip(),
            "token": token,
            "a JWT": "eyJ",
            "Flower password": password,
            "Redis password": redis_password,
            **{f"patient name {n}": n for n in names | parts},
        }
        leaks = [
            f"{what} in {name}"
            for name, log_text in logs.items()
            for what, value in forbidden.items()
            if value in log_text
        ]
        assert not leaks, f"step 5 (logs): {leaks}"
        assert redis_password not in stderr_path.read_text(), "step 5 (logs): the launcher logged the Redis password"
        print(f"stack test: {time.monotonic() - started:.1f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in leftovers(marks):  # the launcher's children live in their own process groups
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_make_run_metrics_ports_and_json_banner() -> None:
    from cxr.stack import banner_line, metrics_ports

    assert metrics_ports({}) == (9108, 9109)
    assert metrics_ports({"CXR_METRICS_PORT": "9200"}) == (9200, 9201)
    with pytest.raises(StackError, match="CXR_METRICS_PORT"):
        metrics_ports({"CXR_METRICS_PORT": "ninety"})
    line = banner_line("API: http://x\ncurl -H 'Authorization: eyJx.y.z'")
    assert "\n" not in line and json.loads(line)["message"].endswith("eyJx.y.z'")  # the token stays usable
