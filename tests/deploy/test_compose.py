"""The deployment files hang together: compose files, Dockerfiles, code and README.

Docker cannot run where the tests run (no daemon), so this checks what can be checked
without it: the compose files parse; every service builds from a Dockerfile that exists
or uses a known image; every command's program is installed by its image and every
module or attribute it names is real and shipped (the project is built as a wheel from
exactly what the Dockerfile COPYs, as ``pip install .`` does in the image); every
environment variable set for the project's images is read by the code and documented;
the shared data, Redis persistence, Flower's auth and the GPU reservation are as the
README promises. ``docker compose config`` runs too where the plugin is installed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "docker-compose.yml"
WORKER_ONLY = ROOT / "docker-compose.worker.yml"
OUR_DOCKERFILES = {"docker/Dockerfile.cpu", "docker/Dockerfile.gpu"}
#: Images the compose files may use without building them, with what they must run.
KNOWN_IMAGES = {"redis:7": {"redis-server", "redis-cli"}}
SHARED = "/data"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path.name}: no services"
    return data


def services(path: Path) -> dict[str, dict[str, Any]]:
    return load(path)["services"]


def all_services() -> list[tuple[str, str, dict[str, Any]]]:
    return [(p.name, name, svc) for p in (MAIN, WORKER_ONLY) for name, svc in services(p).items()]


def dockerfile_of(svc: dict[str, Any]) -> str | None:
    build = svc.get("build")
    if build is None:
        return None
    assert build.get("context") == ".", "images build from the repository root"
    return str(build["dockerfile"])


def dockerfile_lines(rel: str) -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = (ROOT / rel).read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    return [ln.strip() for ln in joined.splitlines() if ln.strip()]


def stages(rel: str) -> list[list[str]]:
    out: list[list[str]] = []
    for line in dockerfile_lines(rel):
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def copies(rel: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY without --from (what comes from the context)."""
    result = []
    for line in dockerfile_lines(rel):
        if not line.upper().startswith("COPY "):
            continue
        parts = [p for p in shlex.split(line)[1:] if not p.startswith("--chmod")]
        if any(p.startswith("--from") for p in parts):
            continue
        result.append((parts[:-1], parts[-1]))
    return result


def argv(command: Any) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(str(command))


@functools.cache
def requirements_script() -> Any:
    """docker/requirements.py, the Dockerfiles' reader of pyproject.toml, as a module."""
    spec = importlib.util.spec_from_file_location("cxr_docker_requirements", ROOT / "docker/requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dependency_names() -> set[str]:
    script = requirements_script()
    return {script.requirement_name(d) for d in script.dependencies(ROOT / "pyproject.toml")}


def image_programs(rel: str) -> set[str]:
    """Programs on PATH in an image built from our Dockerfile ``rel``."""
    deps = dependency_names()
    programs = {"python", "sh"}
    programs |= {script for script in ("gunicorn", "celery") if script in deps}
    programs |= {Path(dest).name for _src, dest in copies(rel) if dest.startswith("/opt/cxr/bin/")}
    return programs


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def source_text() -> str:
    """The project's code (not tests): where a setting must be read."""
    files = [p for d in ("api", "cxr", "inference", "reports", "workers") for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / "celeryconfig.py", *sorted((ROOT / "docker").glob("*.sh"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def read_by_code(name: str, code: str) -> bool:
    """A Python string literal naming it, or a shell expansion of it."""
    return bool(re.search(rf"""["']{name}["']|\$\{{?{name}\b""", code))


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def documented_settings() -> set[str]:
    """Names in the first column of README's Configuration table."""
    names: set[str] = set()
    for line in readme_section("Configuration").splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def installed_package_text(package: str) -> str:
    module = __import__(package)
    assert module.__file__
    return "\n".join(
        p.read_text(encoding="utf-8", errors="replace") for p in Path(module.__file__).parent.rglob("*.py")
    )


# -- parsing and images -------------------------------------------------------------------


def test_compose_files_parse_with_the_expected_services() -> None:
    assert set(services(MAIN)) == {"redis", "api", "worker", "worker-cpu", "flower", "dicom-node"}
    assert set(services(WORKER_ONLY)) == {"worker"}


@pytest.mark.parametrize(("file", "name", "svc"), all_services(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_service_builds_from_our_dockerfile_or_uses_a_known_image(
    file: str, name: str, svc: dict[str, Any]
) -> None:
    dockerfile = dockerfile_of(svc)
    if dockerfile is None:
        assert svc.get("image") in KNOWN_IMAGES, f"{file} {name}: unknown image {svc.get('image')!r}"
        return
    assert dockerfile in OUR_DOCKERFILES and (ROOT / dockerfile).is_file(), f"{file} {name}: {dockerfile}"
    tag = {"docker/Dockerfile.cpu": "cxr-engine:cpu", "docker/Dockerfile.gpu": "cxr-engine:gpu"}[dockerfile]
    assert svc.get("image") == tag, f"{file} {name}: the built image is tagged {tag}"


@pytest.mark.parametrize(("file", "name", "svc"), all_services(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_service_restarts_and_has_a_health_check(file: str, name: str, svc: dict[str, Any]) -> None:
    assert svc.get("restart") == "unless-stopped", f"{file} {name}"
    test = svc.get("healthcheck", {}).get("test")
    assert test and test[0] in ("CMD", "CMD-SHELL"), f"{file} {name}: no health check"
    program = test[1] if test[0] == "CMD" else shlex.split(test[1])[0]
    dockerfile = dockerfile_of(svc)
    provided = KNOWN_IMAGES[svc["image"]] if dockerfile is None else image_programs(dockerfile)
    assert program in provided, f"{file} {name}: health check runs {program!r}, not in the image"
    if program == "python":
        ast.parse(test[test.index("-c") + 1])  # the inline check is valid Python


# -- commands resolve to what the image installs --------------------------------------------


def check_module_attr(ref: str) -> None:
    """``package.module`` or ``package.module:attr`` (``attr()`` is called by gunicorn)."""
    module_name, _, attr = ref.partition(":")
    module = __import__(module_name, fromlist=["_"])
    assert module.__file__ and Path(module.__file__).resolve().is_relative_to(ROOT), (
        f"{module_name} is not the project's"
    )
    if attr.endswith("()"):
        assert callable(getattr(module, attr.removesuffix("()"))), ref
    elif attr:
        from celery import Celery

        assert isinstance(getattr(module, attr), Celery), f"{ref} is not a Celery app"


def command_modules(args: list[str]) -> list[str]:
    """Project modules (and attributes) a gunicorn or celery command line names."""
    refs: list[str] = []
    if args[0] == "gunicorn":
        refs.append(args[args.index("-c") + 1].removeprefix("python:"))
        refs.append(args[-1])
    if args[0] == "celery" and "-A" in args:
        refs.append(args[args.index("-A") + 1] + ":app")
    if args[:2] == ["python", "-m"]:
        refs.append(args[2])
    return refs


def worker_script_commands() -> list[list[str]]:
    """The commands docker/worker.sh runs (the ``cxr-worker`` entrypoint)."""
    text = (ROOT / "docker/worker.sh").read_text(encoding="utf-8")
    text = re.sub(r"\\\n\s*", " ", text)
    found = [shlex.split(m) for m in re.findall(r"\$\((python -m [^)]*)\)", text)]
    found += [shlex.split(m)[1:] for m in re.findall(r"^exec .*$", text, re.MULTILINE)]
    return found


@pytest.mark.parametrize(
    ("file", "name", "svc"),
    [s for s in all_services() if dockerfile_of(s[2])],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_command_exists_in_its_image(file: str, name: str, svc: dict[str, Any]) -> None:
    dockerfile = dockerfile_of(svc)
    assert dockerfile
    args = argv(svc["command"])
    programs = image_programs(dockerfile)
    assert args[0] in programs, f"{file} {name}: {args[0]!r} is not installed by {dockerfile}"
    commands = [args]
    if args[0] == "cxr-worker":
        commands = worker_script_commands()
        assert [c[:4] for c in commands] == [
            ["python", "-m", "workers.gpu", "concurrency"],
            ["celery", "-A", "workers.app", "worker"],
        ]
    for command in commands:
        assert command[0] in programs, f"{file} {name}: {command[0]!r} not in {dockerfile}"
        for ref in command_modules(command):
            check_module_attr(ref)
    if args[:2] == ["celery", "flower"]:
        assert "flower" in dependency_names(), "flower must be a dependency for `celery flower`"


def test_worker_entrypoint_prints_a_concurrency() -> None:
    """The entrypoint's first step, run for real: no GPU here, two cores allowed."""
    out = subprocess.run(
        [sys.executable, "-m", "workers.gpu", "concurrency"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "CXR_WORKER_CONCURRENCY": "3"},
    )
    assert out.stdout.strip() == "3"
    bad = subprocess.run(
        [sys.executable, "-m", "workers.gpu", "concurrency"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CXR_WORKER_CONCURRENCY": "0"},
        check=False,
    )
    assert bad.returncode == 2 and "at least 1" in bad.stderr


@functools.cache
def wheel_contents(sources: tuple[str, ...]) -> frozenset[str]:
    """Names in the wheel ``pip`` builds from a build context holding only ``sources``
    (both Dockerfiles copy the same sources: built once)."""
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp) / "context"
        for src in sources:
            target = context / src
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / src, target)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", f"{tmp}/wheel", str(context)],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert built.returncode == 0, built.stderr[-2000:]
        (wheel,) = Path(tmp, "wheel").glob("*.whl")
        return frozenset(zipfile.ZipFile(wheel).namelist())


@pytest.mark.parametrize("dockerfile", sorted(OUR_DOCKERFILES))
def test_image_installs_the_project_from_what_it_copies(dockerfile: str) -> None:
    """Build the wheel from exactly the Dockerfile's COPY sources (as `pip install .` does
    in the image): the modules the commands name and the package data must be in it."""
    ignored = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    sources: list[str] = []
    for srcs, dest in copies(dockerfile):
        for src in srcs:
            assert src not in ignored, f"{dockerfile} copies {src}, which .dockerignore leaves out"
            if not dest.startswith("/opt/"):  # the entrypoint is checked above
                sources.append(src)
    names = wheel_contents(tuple(sorted(sources)))
    modules = [
        str(path.relative_to(ROOT))
        for pkg in ("api", "workers", "engine", "inference", "reports", "cxr", "demo")
        for path in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in path.parts
    ]
    for needed in (
        *modules,
        "celeryconfig.py",
        "inference/bundles/demo/model.keras",
        "inference/bundles/demo/manifest.json",
        "reports/fonts/DejaVuSans.ttf",
        "api/openapi.yaml",  # served at GET /openapi.json
    ):
        assert needed in names, f"{dockerfile}: the installed project lacks {needed}"


def test_gpu_image_gets_the_cuda_build_and_never_tensorflow_cpu() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "docker/requirements.py"), "--without-tensorflow", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() and not re.search(r"^tensorflow", out, re.MULTILINE | re.IGNORECASE), out
    assert "celery[redis]" in out and "flask" in out
    gpu = " ".join(dockerfile_lines("docker/Dockerfile.gpu"))
    assert "requirements.py --without-tensorflow" in gpu
    assert re.search(r'pip install "tensorflow\[and-cuda\]==\$\{TENSORFLOW_VERSION\}" -r requirements.txt', gpu)
    assert "pip install --no-deps ." in gpu and "! pip show --quiet tensorflow-cpu" in gpu
    cpu = " ".join(dockerfile_lines("docker/Dockerfile.cpu"))
    assert "--without-tensorflow" not in cpu and "and-cuda" not in cpu


@pytest.mark.parametrize("dockerfile", sorted(OUR_DOCKERFILES))
def test_images_cache_dependencies_run_unprivileged_and_hold_no_secrets(dockerfile: str) -> None:
    lines = dockerfile_lines(dockerfile)
    copied = [i for i, ln in enumerate(lines) if ln.startswith("COPY ") and "--from" not in ln]
    deps_step = next(i for i, ln in enumerate(lines) if "pip install" in ln and "requirements.txt" in ln)
    # Only pyproject.toml and the requirements script come before the dependency layer.
    assert all(
        copies(dockerfile)[k][0] == ["pyproject.toml", "docker/requirements.py"]
        for k, i in enumerate(copied)
        if i < deps_step
    )
    final = stages(dockerfile)[-1]
    assert any(ln.startswith("COPY --from=build /opt/cxr /opt/cxr") for ln in final)
    assert [ln for ln in final if ln.startswith("USER ")] == ["USER cxr"]
    text = (ROOT / dockerfile).read_text()
    for secret in ("CXR_JWT_SECRET", "FLOWER_BASIC_AUTH", "REDIS_PASSWORD"):
        assert secret not in text, f"{dockerfile} mentions {secret}: secrets never go into an image"


# -- settings: set, read, documented ---------------------------------------------------------


def set_variables() -> dict[str, set[str]]:
    """Variables given to the project's images: compose ``environment`` and Dockerfile ENV."""
    found: dict[str, set[str]] = {}
    for file, name, svc in all_services():
        if dockerfile_of(svc):
            for var in env_of(svc):
                found.setdefault(var, set()).add(f"{file}:{name}")
    for dockerfile in sorted(OUR_DOCKERFILES):
        for line in dockerfile_lines(dockerfile):
            if line.startswith("ENV "):
                for var in re.findall(r"([A-Z][A-Z0-9_]*)=", line):
                    if var.startswith("CXR_"):
                        found.setdefault(var, set()).add(dockerfile)
    return found


def test_every_variable_set_is_read_by_the_code_and_documented() -> None:
    code = source_text()
    celery_and_flower = installed_package_text("celery") + installed_package_text("flower")
    documented = documented_settings()
    problems = []
    for var, where in sorted(set_variables().items()):
        # CELERY_BROKER_URL is Celery's own (Flower takes the broker from it).
        readers = celery_and_flower if var.startswith("CELERY_") else code
        if not read_by_code(var, readers):
            problems.append(f"{var} ({', '.join(sorted(where))}) is read nowhere")
        if var not in documented:
            problems.append(f"{var} ({', '.join(sorted(where))}) has no row in README's Configuration table")
    assert not problems, "\n".join(problems)


def test_every_compose_substitution_is_documented_in_the_deployment_section() -> None:
    section = readme_section("Deployment (docker compose, many hosts)")
    for path in (MAIN, WORKER_ONLY):
        for var in set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", path.read_text())):
            assert f"`{var}`" in section, f"{path.name} uses ${{{var}}}: document it in the Deployment section"


def test_flower_asks_for_basic_auth_from_an_env_file() -> None:
    flower = services(MAIN)["flower"]
    assert "FLOWER_BASIC_AUTH" not in env_of(flower), "the password stays out of the compose file"
    assert flower["env_file"] == ["secrets/flower.env"]
    example = (ROOT / "docker/flower.env.example").read_text()
    assert re.search(r"^FLOWER_BASIC_AUTH=\S+:\S+$", example, re.MULTILINE)
    flower_code = installed_package_text("flower")
    assert "ENV_VAR_PREFIX = 'FLOWER_'" in flower_code and 'define("basic_auth"' in flower_code, (
        "Flower reads its basic_auth option from FLOWER_BASIC_AUTH"
    )
    assert "--broker" not in " ".join(argv(flower["command"])), "no password on a command line"
    assert env_of(flower)["CELERY_BROKER_URL"] == env_of(services(MAIN)["api"])["REDIS_URL"]


def test_api_takes_the_jwt_secret_from_a_docker_secret() -> None:
    data = load(MAIN)
    api = data["services"]["api"]
    env = env_of(api)
    assert "CXR_JWT_SECRET" not in env
    assert env["CXR_JWT_SECRET_FILE"] == "/run/secrets/cxr_jwt_secret" and env["CXR_ENV"] == "production"
    assert api["secrets"] == ["cxr_jwt_secret"] and data["secrets"]["cxr_jwt_secret"]["file"]


# -- storage, Redis, GPUs, the worker-only file -------------------------------------------------


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """container path -> host source (the source may hold ``${VAR:-default}``)."""
    found = {}
    for volume in svc.get("volumes", []):
        source, _, target = str(volume).rpartition(":")
        if target in ("ro", "rw"):
            source, _, target = source.rpartition(":")
        found[target] = source
    return found


def test_shared_data_is_mounted_at_the_same_path_everywhere() -> None:
    main = services(MAIN)
    sources = {name: mounts(main[name]).get(SHARED) for name in ("api", "worker", "worker-cpu")}
    assert len(set(sources.values())) == 1 and None not in sources.values(), sources
    assert env_of(main["api"])["CXR_DATA_ROOTS"] == SHARED
    assert SHARED in mounts(services(WORKER_ONLY)["worker"])
    # Workers check every path they are sent against their own roots (issue 15 item 2).
    for worker in (main["worker"], main["worker-cpu"], services(WORKER_ONLY)["worker"]):
        assert env_of(worker)["CXR_DATA_ROOTS"] == SHARED and env_of(worker)["CXR_ENV"] == "production"
    assert "redis-data:/data" in main["redis"]["volumes"], "Redis persists its append-only file"


def test_redis_persists_and_never_evicts() -> None:
    args = argv(services(MAIN)["redis"]["command"])
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" in args, "Redis is reachable from other hosts: it needs a password"


def test_gpu_workers_reserve_gpus_and_run_the_cuda_image() -> None:
    for file, name, svc in all_services():
        if dockerfile_of(svc) == "docker/Dockerfile.gpu":
            (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], f"{file} {name}"
            assert argv(svc["command"]) == ["cxr-worker"], "concurrency comes from the GPU count"
            assert "CXR_MIXED_PRECISION" in env_of(svc)
            assert svc.get("init") is True, "an init process forwards signals and reaps children"


def test_worker_only_file_uses_the_api_hosts_redis() -> None:
    data = load(WORKER_ONLY)
    worker = data["services"]["worker"]
    assert "redis" not in data["services"] and "depends_on" not in worker
    url = env_of(worker)["REDIS_URL"]
    assert "@redis:" not in url and "${CXR_REDIS_HOST" in url
    assert worker["hostname"].startswith("${CXR_WORKER_HOSTNAME"), "node names must tell hosts apart"


# -- the API and Flower start as the compose file runs them ------------------------------------


def substituted(value: str) -> str:
    """A compose value with each ``${VAR:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, auth: str | None = None, timeout: float = 60.0
) -> int:
    """The first HTTP status the server answers with (basic ``auth`` if given)."""
    import base64
    import urllib.error
    import urllib.request

    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s: {log.read_text()[-3000:]}")


def token_for(secret: str, redis_url: str) -> str:
    from api import create_app
    from api.auth import issue_token

    return issue_token(create_app({"CXR_JWT_SECRET": secret, "REDIS_URL": redis_url, "TESTING": True}), "compose")


def wait_http_token(url: str, token: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": token}), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def start_service(
    name: str, svc: dict[str, Any], env: dict[str, str], tmp_path: Path, replace: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """The service's command, its programs taken from this venv, run from a folder outside
    the repository as in the image (the project from this checkout, as for the workers)."""
    args = [replace.get(a, a) for a in argv(svc["command"])]
    args[0] = str(Path(sys.executable).parent / args[0])
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, log


@pytest.mark.service
def test_api_and_flower_start_as_the_compose_file_runs_them(tmp_path: Path) -> None:
    import redis

    from cxr.stack import Child, free_port, stop_group
    from tests.support.service import redis_db_url

    main = services(MAIN)
    redis_url = redis_db_url("compose")  # this module's and tests/workers/test_gpu.py's database, flushed
    redis.Redis.from_url(redis_url).flushdb()
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
    }

    api_env = {k: substituted(v) for k, v in env_of(main["api"]).items()}
    secret = tmp_path / "jwt-secret"
    secret.write_text("s" * 48 + "\n")
    api_port, flower_port = free_port(), free_port()
    api_env.update(
        base,
        REDIS_URL=redis_url,
        CXR_JWT_SECRET_FILE=str(secret),
        CXR_HOST="127.0.0.1",
        CXR_PORT=str(api_port),
        CXR_API_WORKERS="1",
    )
    assert api_env["CXR_ENV"] == "production"  # so the secret file and data roots are really required
    api, api_log = start_service("api", main["api"], api_env, tmp_path, {})

    flower_env = dict(base, CELERY_BROKER_URL=redis_url)
    for line in (ROOT / "docker/flower.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            flower_env[key] = value
    flower, flower_log = start_service(
        "flower", main["flower"], flower_env, tmp_path, {"--port=5555": f"--port={flower_port}"}
    )
    try:
        assert wait_http(f"http://127.0.0.1:{api_port}/ping", api, api_log) == 200
        # A token signed with the secret file's content is accepted: the API read the Docker secret.
        jobs = f"http://127.0.0.1:{api_port}/jobs/no-such-job"
        assert wait_http(jobs, api, api_log) == 401
        assert wait_http_token(jobs, token_for(secret.read_text().strip(), redis_url)) == 404
        url = f"http://127.0.0.1:{flower_port}"
        assert wait_http(f"{url}/healthcheck", flower, flower_log) == 200
        assert wait_http(f"{url}/", flower, flower_log) == 401, "Flower must ask for a password"
        assert wait_http(f"{url}/", flower, flower_log, auth=flower_env["FLOWER_BASIC_AUTH"]) == 200
    finally:
        stop_group(Child("flower", flower, flower_log))
        stop_group(Child("api", api, api_log))
        redis.Redis.from_url(redis_url).flushdb()
    assert redis_url.split("//", 1)[1] in flower_log.read_text(), "Flower watches CELERY_BROKER_URL's Redis"


def test_dicom_node_listens_where_it_is_published_and_workers_know_the_destination() -> None:
    """The node's port is the one published and probed; it sees the shared data as its
    data root (spool and results live there); every worker that may run a chord callback
    gets the same destination and calling AE title (it sends the results back)."""
    main = services(MAIN)
    node = main["dicom-node"]
    env = env_of(node)
    port = env["CXR_DICOM_PORT"]
    assert [p.rsplit(":", 1)[1] for p in node["ports"]] == [port]
    assert port == "11112" and f"'127.0.0.1', {port}" in node["healthcheck"]["test"][-1]
    assert env["CXR_DATA_ROOTS"] == SHARED and SHARED in mounts(node)
    assert argv(node["command"])[-1] == "dicom-node"
    workers = [main["worker"], main["worker-cpu"], services(WORKER_ONLY)["worker"]]
    for worker in workers:
        assert env_of(worker)["CXR_DICOM_DESTINATION"] == "${CXR_DICOM_DESTINATION:-}"
        assert env_of(worker)["CXR_DICOM_AE_TITLE"] == env["CXR_DICOM_AE_TITLE"]
