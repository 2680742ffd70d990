"""A bulk job through the service next to the in-process engine, on the same files.

Side by side in one run (this machine is shared and noisy; compare ratios):

1. ``cxr infer`` as a user runs it (a subprocess: wall time including model load), and
   the same loop in-process with the model already loaded (``process_file`` per file);
2. the service: gunicorn + a real ``celery worker`` with 1, then 2 processes, one bulk
   job each (``wait: true``), timed from the POST to the answer; the API's resident
   memory (gunicorn master + workers) is sampled every 0.2 s during each job.

Usage: ``python -m bench.service --files 200 --size 1024`` (writes
``bench-service.json``). Uses Redis database 9 (``--redis-url``) and flushes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from cxr.stack import Child, free_port, stop_group

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class RssSampler(threading.Thread):
    """Peak and mean resident memory of a process tree (the gunicorn master and its workers)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.samples.append(sum(_rss_kib(p) for p in [self.pid, *_children(self.pid)]))
            time.sleep(self.interval)

    def result(self) -> dict[str, float]:
        self.stop_event.set()
        self.join()
        mib = [s / 1024 for s in self.samples if s]
        return {"peak_mib": round(max(mib), 1), "mean_mib": round(sum(mib) / len(mib), 1), "samples": len(mib)}


def _start(name: str, cmd: list[str], env: dict[str, str], log: Path) -> Child:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return Child(name, proc, log)


def _http(method: str, url: str, token: str | None = None, body: Any = None, timeout: float = 3600) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", token)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout} s")


def in_process(files: list[Path], out: Path) -> dict[str, float]:
    from inference.bundle import read_bundle
    from inference.dicom_read import ReadOptions
    from inference.pipeline import process_file
    from inference.predict import Predictor, configure_tensorflow

    configure_tensorflow()
    predictor = Predictor(read_bundle())
    options = ReadOptions.from_env()
    for sub in ("warmup", "loop"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    process_file(files[0], out / "warmup", predictor, job_id="warmup", options=options)
    t = time.perf_counter()
    records = [process_file(f, out / "loop", predictor, job_id="loop", options=options) for f in files]
    wall = time.perf_counter() - t
    assert all(r["status"] == "processed" for r in records), [r for r in records if r["status"] != "processed"][:1]
    return {"wall_s": round(wall, 2), "files_per_s": round(len(files) / wall, 3)}


def cli_infer(folder: Path, out: Path, env: dict[str, str]) -> dict[str, float]:
    t = time.perf_counter()
    subprocess.run([str(BIN / "cxr"), "infer", str(folder), str(out), "--quiet"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    return {"wall_s": round(wall, 2), "files_per_s": round(len(list(folder.glob("*.dcm"))) / wall, 3)}


def service_job(folder: Path, out: Path, env: dict[str, str], concurrency: int, logs: Path,
                api_port: int, api_pid: int, token: str) -> dict[str, Any]:
    worker = _start("worker", [str(BIN / "celery"), "-A", "workers.app", "worker", "-Q", "inference,celery",
                               "-c", str(concurrency), "-n", f"bench{concurrency}@%h", "--loglevel=WARNING"],
                    env, logs / f"worker-c{concurrency}.log")
    try:
        base = f"http://127.0.0.1:{api_port}"

        def worker_ready() -> bool:
            try:
                data = _http("GET", f"{base}/health", token, timeout=5)
            except urllib.error.HTTPError:
                return False
            return bool(data["Data"]["workers"])
        _wait_until(worker_ready, 120, f"worker -c {concurrency}")
        # A warm-up job (a few files) so that every child has loaded the model and traced it.
        warm = folder.parent / f"warmup-c{concurrency}"
        warm.mkdir(exist_ok=True)
        for f in sorted(folder.glob("*.dcm"))[: 2 * concurrency]:
            (warm / f.name).write_bytes(f.read_bytes())
        _http("POST", f"{base}/bulk_inference", token,
              {"input_folder_path": str(warm), "output_folder_path": str(out) + "-warmup"})
        sampler = RssSampler(api_pid)
        sampler.start()
        t = time.perf_counter()
        answer = _http("POST", f"{base}/bulk_inference", token,
                       {"input_folder_path": str(folder), "output_folder_path": str(out)})
        wall = time.perf_counter() - t
        rss = sampler.result()
    finally:
        stop_group(worker)
    summary = answer["Data"]
    return {"wall_s": round(wall, 2), "files_per_s": round(summary["total"] / wall, 3),
            "processed": summary["processed"], "skipped": len(summary["skipped"]),
            "api_rss": rss, "job_wall_s": summary["timings"].get("wall_s")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--output", default="bench-service.json")
    args = parser.parse_args(argv)

    import redis

    from inference.phantom_dicom import write_phantoms

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-service-"))
    folder = work / "in"
    write_phantoms(folder, args.files, seed=5150, size=args.size)
    files = sorted(folder.glob("*.dcm"))
    secret = secrets.token_urlsafe(48)
    env = dict(os.environ, REDIS_URL=args.redis_url, CXR_JWT_SECRET=secret, CXR_DATA_ROOTS=str(work),
               TF_CPP_MIN_LOG_LEVEL="2", CXR_BULK_WAIT_S="3600")
    redis.Redis.from_url(args.redis_url).flushdb()

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "files": args.files, "size": args.size}
    results["cli_infer"] = cli_infer(folder, work / "cli-out", env)
    results["in_process"] = in_process(files, work / "inproc-out")

    port = free_port()
    api = _start("api", [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8",
                  "--timeout", "120", "--no-control-socket", "api:create_app()"], env, work / "api.log")
    try:
        _wait_until(lambda: _http("GET", f"http://127.0.0.1:{port}/ping", timeout=2)["status"] == "ok", 60, "API")
        os.environ.update(CXR_JWT_SECRET=secret, REDIS_URL=args.redis_url)
        from api import create_app
        from api.auth import issue_token

        token = issue_token(create_app({"CXR_DATA_ROOTS": str(work)}), "bench")
        for c in (1, 2):
            results[f"service_c{c}"] = service_job(folder, work / f"svc-c{c}", env, c, work, port, api.proc.pid,
                                                   token)
    finally:
        stop_group(api)
        redis.Redis.from_url(args.redis_url).flushdb()

    base = results["in_process"]["files_per_s"]
    results["ratios"] = {
        "service_c1_vs_in_process": round(results["service_c1"]["files_per_s"] / base, 3),
        "service_c2_vs_c1": round(results["service_c2"]["files_per_s"] / results["service_c1"]["files_per_s"], 3),
        "cli_vs_in_process": round(results["cli_infer"]["files_per_s"] / base, 3),
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.files} files of {args.size}x{args.size} px, {os.cpu_count()} CPUs (work folder {work})")
    print(f"{'run':<34} {'wall s':>8} {'files/s':>8} {'API RSS peak MiB':>17}")
    for key, label in (("cli_infer", "cxr infer (CLI, incl. model load)"), ("in_process", "in-process loop, model warm"),
                       ("service_c1", "service, 1 worker process"), ("service_c2", "service, 2 worker processes")):
        r = results[key]
        rss = r.get("api_rss", {}).get("peak_mib", "")
        print(f"{label:<34} {r['wall_s']:>8} {r['files_per_s']:>8} {rss:>17}")
    print(json.dumps(results["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
