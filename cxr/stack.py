"""``make run``: start the whole CXR Engine stack on this machine, and stop all of it.

Why: the service is several processes (gunicorn serving the API, a Celery worker holding
the model, Flower, and Redis between them). A newcomer should get all of them, a token
and a working ``curl`` line from one command, and get every process back with one Ctrl-C.

1. Redis: ``REDIS_URL``; else one answering on 127.0.0.1:6379 (unless
   ``CXR_RUN_PRIVATE_REDIS=1``); else a private ``redis-server`` (from PATH) on a free
   port of 127.0.0.1, stopped last, with a password generated per run: any local user
   could otherwise send the workers tasks (issue 15). The password is in the server's
   config file (``<var>/run/redis/redis.conf``, 0600), never on a command line.
2. Secrets: a JWT secret file ``<var>/run/jwt-secret`` made on first use and kept, unless
   CXR_JWT_SECRET(_FILE) is set; Flower credentials per run unless FLOWER_BASIC_AUTH is;
   the Redis URL, password included, in ``<var>/run/redis-url`` (0600) for ``cxr token``
   commands. API, worker and Flower get the URL in their environment (Flower as
   ``CELERY_BROKER_URL``, not ``--broker``, so ``ps`` never shows it); what the launcher
   prints and logs shows the password masked.
3. Demo data: 6 phantoms in ``<var>/demo-input`` (once); CXR_DATA_ROOTS defaults to ``<var>``.
4. gunicorn, the Celery worker, Flower and the DICOM node (``cxr dicom-node``: AE
   ``CXR_DICOM_AE_TITLE``, port ``CXR_DICOM_PORT``, on ``CXR_HOST``), each in its own
   session and process group, logging to ``<var>/run/logs/<name>.log``; ready when /ping,
   /health (a worker answers), Flower's /healthcheck and the node's port answer.
5. A banner (URLs, logs, a token command, one curl line), then it waits. SIGINT or SIGTERM
   stops each group (worker first so it hands back its tasks, private Redis last) and
   exits 0; a child that dies stops the rest and exits 1, naming it.

Settings: CXR_HOST, CXR_PORT, CXR_API_WORKERS, CXR_API_THREADS, CXR_WORKER_CONCURRENCY,
FLOWER_PORT, CXR_VAR_DIR, CXR_RUN_PRIVATE_REDIS, CXR_METRICS_PORT (the API's metrics port,
default 9108; the worker's is the next one; both bound to CXR_METRICS_HOST, 127.0.0.1),
CXR_LOG_FORMAT (``json``: this launcher's lines, the banner included, and those of the
API and the worker are JSON lines; Flower's stay text). It never imports TensorFlow;
``api`` for the API's command line and to issue a token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

from api import serve_command
from engine.logs import log_format, redact_also, redact_handlers
from engine.monitoring import metrics_host, metrics_port
from workers.app import worker_command

log = logging.getLogger("cxr.stack")

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
STOP_ORDER = ("dicom-node", "worker", "api", "flower", "redis")
STOP_GRACE_S = 20.0
READY_TIMEOUT_S = 120.0


class Shutdown(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave whatever the launcher is doing.

    While ``defer`` is set (a child is being started) the handler only notes the signal
    in ``pending``; ``Stack.start`` raises it once the child is recorded.
    """

    defer = False
    pending = ""


class StackError(Exception):
    """A start-up problem the user must fix; the message says what to do."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Stack:
    logs: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log_path = self.logs / f"{name}.log"
        Shutdown.defer = True  # not a blocked signal mask around Popen: the child would inherit it
        try:
            with open(log_path, "ab") as out:  # the child keeps its own descriptor
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self.children.append(Child(name, proc, log_path))
        finally:
            Shutdown.defer = False
        if Shutdown.pending:
            raise Shutdown(Shutdown.pending)
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop(self) -> None:
        for child in sorted(self.children, key=lambda c: STOP_ORDER.index(c.name)):
            stop_group(child)
        self.children.clear()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_group(child: Child) -> None:
    """SIGTERM the child's process group, wait up to STOP_GRACE_S for all of it, then SIGKILL."""
    pgid = child.proc.pid  # start_new_session: the child leads its own group
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while (child.proc.poll() is None or group_alive(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if child.proc.poll() is not None and not group_alive(pgid):
            log.info("stopped %s", child.name)
            return
        if sig == signal.SIGTERM:
            log.warning("%s did not stop within %.0f s; killing it", child.name, grace)
    log.error("%s (process group %d) is still there after SIGKILL", child.name, pgid)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def redis_answers(url: str, timeout: float) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def wait_until(what: str, check: Callable[[], bool], stack: Stack, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``check`` until true; a child that exits meanwhile, or the deadline, fails."""
    deadline = time.monotonic() + timeout
    while not check():
        if (dead := stack.first_dead()) is not None:
            raise StackError(
                f"{dead.name} exited (status {dead.proc.returncode}) while waiting for {what}; "
                f"last lines of {dead.log_path}:\n{tail(dead.log_path)}"
            )
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
    log.info("%s: ready", what)


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for what the launcher prints)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def resolve_redis(state: Path, stack: Stack, env: dict[str, str]) -> str:
    if url := os.environ.get("REDIS_URL", "").strip():
        if not redis_answers(url, timeout=3.0):
            raise StackError(f"REDIS_URL={url} does not answer PING; start that Redis or unset REDIS_URL")
        return url
    private_only = os.environ.get("CXR_RUN_PRIVATE_REDIS", "").strip() in ("1", "true", "yes")
    if not private_only and redis_answers(LOCAL_REDIS, timeout=1.0):
        return LOCAL_REDIS
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            "no Redis: set REDIS_URL, run Redis on 127.0.0.1:6379, or install redis-server "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
        )
    return start_private_redis(binary, state / "redis", stack, env)


def start_private_redis(binary: str, folder: Path, stack: Stack, env: dict[str, str]) -> str:
    """A ``redis-server`` on 127.0.0.1 only, with a password made for this run; its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    redact_also(logging.getLogger(), password)
    config = folder / "redis.conf"
    config.unlink(missing_ok=True)  # a fresh 0600 file each run, whatever mode an old one had
    with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(f"requirepass {password}\nprotected-mode yes\n")
    port = free_port()
    argv = [binary, str(config), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    stack.start("redis", [*argv, "--dir", str(folder)], env)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    wait_until("private Redis", lambda: redis_answers(url, timeout=1.0), stack, timeout=15.0)
    return url


def write_url_file(state: Path, url: str) -> Path:
    """``<state>/redis-url`` (0600, rewritten each run): the URL for ``cxr token`` commands."""
    path = state / "redis-url"
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(url + "\n")
    return path


def local_secret_file(state: Path) -> Path | None:
    """``<state>/jwt-secret`` (made, mode 0600, on first use), or None when the env has a secret."""
    if os.environ.get("CXR_JWT_SECRET") or os.environ.get("CXR_JWT_SECRET_FILE"):
        return None
    path = state / "jwt-secret"
    if not path.exists():
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        log.info("generated a JWT secret for local use in %s (kept for later runs)", path)
    return path


#: Flower's shortest acceptable password when the operator sets FLOWER_BASIC_AUTH.
MIN_FLOWER_PASSWORD = 8


def flower_auth(environ: Mapping[str, str]) -> str:
    """Flower's ``user:password[,user:password...]``: FLOWER_BASIC_AUTH, else generated.

    Flower serves its UI and API to anyone when it has no credentials, and accepts an
    empty password as a password; so every pair must have a user and a password of
    ``MIN_FLOWER_PASSWORD`` characters or more. There is no way to start it without.
    """
    value = environ.get("FLOWER_BASIC_AUTH", "").strip()
    if not value:
        return f"admin:{secrets.token_urlsafe(12)}"
    for pair in value.split(","):
        user, _, password = pair.partition(":")
        if not user.strip() or len(password) < MIN_FLOWER_PASSWORD:
            raise StackError(
                "FLOWER_BASIC_AUTH must be user:password pairs, comma-separated, each password "
                f"{MIN_FLOWER_PASSWORD}+ characters; unset it to get a generated one"
            )
    return value


def ensure_phantoms(folder: Path, size: int) -> None:
    if (folder / "phantoms.json").is_file():
        return
    log.info("writing 6 demo phantoms (%d px) to %s", size, folder)
    done = subprocess.run(
        [sys.executable, "-m", "cxr", "phantoms", str(folder), "--count", "6", "--size", str(size), "--quiet"],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise StackError(f"cxr phantoms failed:\n{done.stdout}{done.stderr}")


def issue_demo_token(env: dict[str, str]) -> str:
    """The one place that imports ``api`` (Flask and Celery; never TensorFlow)."""
    os.environ.update({k: env[k] for k in ("REDIS_URL", "CXR_JWT_SECRET_FILE", "CXR_DATA_ROOTS") if k in env})
    from api import create_app
    from api.auth import issue_token
    from api.config import ConfigError

    try:
        return issue_token(create_app(), "make-run-demo", days=1)
    except ConfigError as exc:
        raise StackError(f"cannot issue the demo token: {exc}") from None


def banner(
    *,
    api: str,
    flower: str,
    auth: str,
    redis_url: str,
    redis_url_file: Path,
    private: bool,
    logs: Path,
    secret_file: Path | None,
    token: str,
    demo_in: Path,
    demo_out: Path,
    dicom: str = "",
    metrics: str = "",
) -> str:
    """What the user needs, every command ready to paste (the test runs the curl line)."""
    user, _, password = auth.split(",")[0].partition(":")
    shown = (
        "from FLOWER_BASIC_AUTH"
        if os.environ.get("FLOWER_BASIC_AUTH", "").strip()
        else f"{password} (generated for this run)"
    )
    cli = Path(sys.executable).parent / "cxr"
    cli_cmd = shlex.quote(str(cli)) if cli.exists() else f"{shlex.quote(sys.executable)} -m cxr"
    prefix = f"CXR_JWT_SECRET_FILE={shlex.quote(str(secret_file))} " if secret_file else ""
    body = json.dumps({"input_folder_path": str(demo_in), "output_folder_path": str(demo_out)})
    rule = "=" * 72
    return "\n".join(
        [
            rule,
            "CXR Engine is running. Ctrl-C stops everything it started.",
            f"  API:     {api}",
            f"  Flower:  {flower}  user {user}, password {shown}",
            f"  Redis:   {masked_url(redis_url)}" + (" (private, stops with the stack)" if private else ""),
            f"  DICOM:   {dicom} (C-STORE studies here; results with DICOM outputs in dicom-results/)",
            f"  Logs:    {logs}/{{api,worker,flower,dicom-node{',redis' if private else ''}}}.log",
            *([f"  Metrics: {metrics}"] if metrics else []),
            f'  Token:   {prefix}REDIS_URL="$(cat {shlex.quote(str(redis_url_file))})" {cli_cmd} token issue --subject you',
            f"  Demo:    bulk inference on {demo_in} (outputs in {demo_out}), demo token valid 1 day:",
            (
                f"curl -sS -X POST {api}/bulk_inference -H 'Content-Type: application/json' "
                f"-H {shlex.quote('Authorization: ' + token)} -d {shlex.quote(body)}"
            ),
            "  The demo model is trained on synthetic images only: it is NOT FOR CLINICAL USE.",
            rule,
        ]
    )


#: ``make run``'s metrics ports when CXR_METRICS_PORT is unset: the API's, and the worker's next to it.
DEFAULT_METRICS_PORT = 9108


def metrics_ports(environ: Mapping[str, str]) -> tuple[int, int]:
    """The API's metrics port (``CXR_METRICS_PORT``, default 9108) and the worker's (the next one)."""
    try:
        port = metrics_port(environ) or DEFAULT_METRICS_PORT
    except ValueError as exc:
        raise StackError(str(exc)) from None
    return port, port + 1


def metrics_env(env: dict[str, str], state: Path, kind: str, port: int) -> dict[str, str]:
    """A child's metrics settings: its own port, and its own multiprocess folder (wiped at its start)."""
    return dict(env, CXR_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(state / "metrics" / kind))


def banner_line(text: str) -> str:
    """The banner as one JSON object (``CXR_LOG_FORMAT=json``), on stdout like the text one.

    Not through the logging handlers: they would mask the demo token the banner exists to give.
    """
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"time": stamp, "level": "INFO", "logger": log.name, "message": text}, ensure_ascii=False)


def run(var: Path, demo_size: int) -> int:
    state, demo_in, demo_out = var / "run", var / "demo-input", var / "demo-output"
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    host = os.environ.get("CXR_HOST", "127.0.0.1")
    client_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    api_port, flower_port = int(os.environ.get("CXR_PORT", "8500")), int(os.environ.get("FLOWER_PORT", "5555"))
    api, flower = f"http://{client_host}:{api_port}", f"http://{client_host}:{flower_port}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    stack = Stack(logs)
    try:
        api_metrics, worker_metrics = metrics_ports(os.environ)
        env["REDIS_URL"] = redis_url = resolve_redis(state, stack, env)
        redis_url_file = write_url_file(state, redis_url)
        if secret_file := local_secret_file(state):
            env["CXR_JWT_SECRET_FILE"] = str(secret_file)
        auth = flower_auth(os.environ)
        if not env.get("CXR_DATA_ROOTS", "").strip():
            env["CXR_DATA_ROOTS"] = str(var)
        ensure_phantoms(demo_in, demo_size)

        py = sys.executable
        stack.start(
            "worker",
            worker_command(
                os.environ.get("CXR_WORKER_CONCURRENCY", str(os.cpu_count() or 1)), "cxr-worker@%h", python=py
            ),
            metrics_env(env, state, "worker", worker_metrics),
        )
        stack.start(
            "api",
            serve_command(py),
            dict(metrics_env(env, state, "api", api_metrics), CXR_HOST=host, CXR_PORT=str(api_port)),
        )
        # Flower's password and the broker URL (with Redis's) reach it in its environment, as its
        # own FLOWER_BASIC_AUTH and Celery's CELERY_BROKER_URL, so `ps` never shows them.
        stack.start(
            "flower",
            [py, "-m", "celery", "flower", f"--port={flower_port}", f"--address={host}"],
            dict(env, FLOWER_BASIC_AUTH=auth, CELERY_BROKER_URL=redis_url),
        )

        dicom_port = int(env.get("CXR_DICOM_PORT", "").strip() or 11112)
        dicom_ae = env.get("CXR_DICOM_AE_TITLE", "").strip() or "CXR_ENGINE"
        stack.start(
            "dicom-node",
            [py, "-m", "cxr", "dicom-node"],
            dict(env, CXR_DICOM_HOST=env.get("CXR_DICOM_HOST", host), CXR_DICOM_PORT=str(dicom_port)),
        )

        token = issue_demo_token(env)
        wait_until("API /ping", lambda: http_status(f"{api}/ping") == 200, stack)
        wait_until(
            "a worker (GET /health)", lambda: http_status(f"{api}/health", {"Authorization": token}) == 200, stack
        )
        wait_until("Flower /healthcheck", lambda: http_status(f"{flower}/healthcheck") == 200, stack)
        wait_until("DICOM node port", lambda: port_open(client_host, dicom_port), stack)
        if not any(
            demo_in.resolve().is_relative_to(os.path.realpath(r.strip()))
            for r in env["CXR_DATA_ROOTS"].split(os.pathsep)
            if r.strip()
        ):
            log.warning("%s is outside CXR_DATA_ROOTS: the demo request below will be refused", demo_in)
        text = banner(
            api=api,
            flower=flower,
            auth=auth,
            redis_url=redis_url,
            redis_url_file=redis_url_file,
            logs=logs,
            private=any(c.name == "redis" for c in stack.children),
            secret_file=secret_file,
            token=token,
            demo_in=demo_in,
            demo_out=demo_out,
            dicom=f"AE {dicom_ae} on {client_host}:{dicom_port}",
            metrics=(
                f"http://{metrics_host()}:{api_metrics}/metrics (API), "
                f"http://{metrics_host()}:{worker_metrics}/metrics (worker); do not expose them"
            ),
        )
        print(banner_line(text) if log_format() == "json" else text, flush=True)

        while (dead := stack.first_dead()) is None:
            time.sleep(0.5)
        log.error(
            "%s exited (status %s); stopping the rest. Last lines of %s:\n%s",
            dead.name,
            dead.proc.returncode,
            dead.log_path,
            tail(dead.log_path),
        )
        return 1
    except Shutdown as exc:
        log.info("%s received: stopping", exc)
        return 0
    except StackError as exc:
        log.error("%s", exc)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if not Shutdown.defer:
        raise Shutdown(signal.Signals(signum).name)
    Shutdown.pending = signal.Signals(signum).name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.stack", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--var",
        default=os.environ.get("CXR_VAR_DIR", "var"),
        help="folder for demo-input, demo-output and run/ (default: $CXR_VAR_DIR or var)",
    )
    parser.add_argument("--demo-size", type=int, default=1024, help="demo phantom size in pixels (default 1024)")
    args = parser.parse_args(argv)
    try:
        log_format()
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stack: %(message)s", datefmt="%H:%M:%S")
    redact_handlers(logging.getLogger())  # e.g. a REDIS_URL with a password in a start-up error
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    return run(Path(args.var).absolute(), args.demo_size)


if __name__ == "__main__":
    sys.exit(main())
