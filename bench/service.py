"""The service measured from outside: gunicorn + real ``celery worker`` processes + Redis.

Pieces used by ``python -m bench`` (``make bench``), each timed from the client's side:

* :func:`bulk_job`: one bulk job (``wait: true``) with 1 or N worker processes, timed
  from the POST to the answer, with the API's resident memory sampled;
* :func:`single_latency`: warm ``POST /single_inference`` latencies (p50, p95);
* :func:`big_job`: a many-file job (10,000 tiny files by default) sent with
  ``wait: false``: broker bytes per file, the API's peak memory, Redis memory before,
  during and after the results and job records expire, and the chord callback's
  duration (from the worker's log line for ``cxr.finalize_job``).

``python -m bench.service --files 200 --size 1024`` runs the bulk part alone, next to
``cxr infer`` and the in-process loop (writes ``bench-service.json``). It uses Redis
database 9 (``--redis-url``) and flushes it before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api import serve_command
from cxr.stack import Child, free_port, stop_group
from workers.app import worker_command

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FINALIZE_LINE = re.compile(r"Task cxr\.finalize_job\[(?P<id>[^\]]+)\] succeeded in (?P<s>[0-9.eE+-]+)s")


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


class Sampler(threading.Thread):
    """Calls ``probe`` every ``interval`` seconds until stopped; keeps the values."""

    def __init__(self, probe: Callable[[], float], interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.probe, self.interval = probe, interval
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.samples.append(self.probe())
            self.stop_event.wait(self.interval)

    def stop(self) -> list[float]:
        self.stop_event.set()
        self.join()
        return [s for s in self.samples if s]


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the gunicorn master and workers)."""
    return sum(_rss_kib(p) for p in [pid, *_children(pid)]) / 1024


def _http(method: str, url: str, token: str | None = None, body: Any = None, timeout: float = 3600) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", token)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout} s")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Service:
    """The API (gunicorn, as deployed: ``api/gunicorn_conf.py``) and workers started on demand."""

    work: Path
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    api: Child | None = None
    port: int = 0
    token: str = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import redis

        secret = secrets.token_urlsafe(48)
        self.env = dict(
            os.environ,
            REDIS_URL=self.redis_url,
            CXR_JWT_SECRET=secret,
            CXR_DATA_ROOTS=str(self.work),
            TF_CPP_MIN_LOG_LEVEL="2",
            CXR_BULK_WAIT_S="3600",
            **self.env,
        )
        redis.Redis.from_url(self.redis_url).flushdb()
        self.port = free_port()
        env = dict(self.env, CXR_PORT=str(self.port))
        self.api = _start(
            "api",
            serve_command(str(BIN / "python")),
            env,
            self.work / "api.log",
        )
        _wait_until(lambda: _http("GET", f"{self.base}/ping", timeout=2)["status"] == "ok", 60, "API")
        os.environ.update(CXR_JWT_SECRET=secret, REDIS_URL=self.redis_url)
        from api import create_app
        from api.auth import issue_token

        self.token = issue_token(create_app({"CXR_DATA_ROOTS": str(self.work)}), "bench")

    def stop(self) -> None:
        import redis

        if self.api is not None:
            stop_group(self.api)
        redis.Redis.from_url(self.redis_url).flushdb()

    def worker(self, concurrency: int, log_name: str, **env: str) -> Child:
        """A ``celery worker`` with ``concurrency`` processes; returns once it answers /health."""
        child = _start(
            "worker",
            worker_command(concurrency, f"{log_name}@%h", python=str(BIN / "python")),
            dict(self.env, **env),
            self.work / f"{log_name}.log",
        )

        def ready() -> bool:
            try:
                data = self.call("GET", "/health", timeout=5)
            except urllib.error.HTTPError:
                return False
            return bool(data["Data"]["workers"])

        _wait_until(ready, 180, f"worker {log_name}")
        return child

    def call(self, method: str, path: str, body: Any = None, timeout: float = 3600) -> Any:
        return _http(method, f"{self.base}{path}", self.token, body, timeout=timeout)

    def api_rss(self) -> float:
        assert self.api is not None
        return tree_rss_mib(self.api.proc.pid)


def _start(name: str, cmd: list[str], env: dict[str, str], log: Path) -> Child:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    return Child(name, proc, log)


def warm_workers(svc: Service, files: Sequence[Path], concurrency: int, out: Path) -> None:
    """A small job first, so that every worker process has loaded the model and traced it."""
    warm = svc.work / f"warmup-{out.name}"
    warm.mkdir(exist_ok=True)
    for f in files[: 2 * concurrency]:
        shutil.copyfile(f, warm / f.name)
    svc.call("POST", "/bulk_inference", {"input_folder_path": str(warm), "output_folder_path": f"{out}-warmup"})


def bulk_job(svc: Service, folder: Path, out: Path) -> dict[str, Any]:
    """One bulk job with ``wait: true``: wall time from the POST to the answer, API memory."""
    sampler = Sampler(svc.api_rss)
    sampler.start()
    t = time.perf_counter()
    answer = svc.call("POST", "/bulk_inference", {"input_folder_path": str(folder), "output_folder_path": str(out)})
    wall = time.perf_counter() - t
    rss = sampler.stop()
    summary = answer["Data"]
    return {
        "wall_s": round(wall, 2),
        "files_per_s": round(summary["total"] / wall, 3),
        "processed": summary["processed"],
        "skipped": len(summary["skipped"]),
        "api_rss_peak_mib": round(max(rss), 1),
        "job_wall_s": summary["timings"].get("wall_s"),
    }


def single_latency(
    svc: Service, path: Path, out: Path, requests: int, in_process_run: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """Sequential warm ``POST /single_inference`` calls on one file (client-side latency).

    With ``in_process_run`` (the same file through ``process_file`` in this process),
    each request is paired with one in-process run right after it, so that the
    overhead (latency minus in-process time) is taken under the same load: on a shared
    machine two separate series drift apart by more than the overhead itself.
    """
    body = {"input_image_path": str(path), "output_folder_path": str(out), "save_to_disk": True}
    svc.call("POST", "/single_inference", body)  # warm-up
    latencies, local = [], []
    for _ in range(requests):
        t = time.perf_counter()
        answer = svc.call("POST", "/single_inference", body)
        latencies.append((time.perf_counter() - t) * 1000.0)
        assert answer["Result"] == "Success", answer
        if in_process_run is not None:
            t = time.perf_counter()
            in_process_run()
            local.append((time.perf_counter() - t) * 1000.0)
    result: dict[str, Any] = {
        "requests": requests,
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p95_ms": round(percentile(latencies, 0.95), 1),
        "latencies_ms": [round(v, 1) for v in latencies],
    }
    if local:
        overhead = [a - b for a, b in zip(latencies, local)]
        result.update(
            in_process_p50_ms=round(percentile(local, 0.5), 1),
            in_process_p95_ms=round(percentile(local, 0.95), 1),
            overhead_p50_ms=round(percentile(overhead, 0.5), 1),
            overhead_p95_ms=round(percentile(overhead, 0.95), 1),
        )
    return result


def write_tiny_corpus(folder: Path, count: int, size: int) -> float:
    """``count`` valid DICOM files of ``size`` px: one phantom, each copy its own patient and UIDs."""
    from pydicom.uid import generate_uid

    from demo.phantom_dicom import PhantomFileSpec, phantom_dataset
    from demo.phantoms import make_phantom

    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    ds = phantom_dataset(
        make_phantom(77, 0, size=size), seed=77, index=0, spec=PhantomFileSpec("CR", "MONOCHROME2", 12, False, True)
    )
    for i in range(count):
        uid = generate_uid(entropy_srcs=["cxr-bench-big", str(i)])
        ds.PatientID = f"BIG{i:06d}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(folder / f"tiny_{i:06d}.dcm", enforce_file_format=True)
    return round(time.perf_counter() - t, 1)


def big_job(svc: Service, folder: Path, out: Path, *, concurrency: int, ttl_s: int) -> dict[str, Any]:
    """A many-file job: broker bytes, API memory, Redis memory during and after expiry, callback time.

    The job is sent with ``wait: false`` before the workers start, so the broker's
    queue can be weighed with every message in it; its workers run with
    ``CXR_RESULT_TTL_S`` = ``CXR_JOB_TTL_S`` = ``ttl_s`` (the API too: see ``main``),
    so that "after expiry" is observed within the run.
    """
    import redis

    client = redis.Redis.from_url(svc.redis_url)
    baseline = {"used_memory_mib": _redis_mib(client), "keys": int(client.dbsize())}
    redis_peak = Sampler(lambda: _redis_mib(client), interval=0.5)
    api_rss = Sampler(svc.api_rss, interval=0.5)
    redis_peak.start()
    api_rss.start()
    answer = svc.call(
        "POST", "/bulk_inference", {"input_folder_path": str(folder), "output_folder_path": str(out), "wait": False}
    )
    job_id = answer["Data"]["job_id"]
    messages, queue_bytes = int(client.llen("inference")), int(client.memory_usage("inference", samples=0) or 0)
    queued = {
        "messages": messages,
        "queue_bytes": queue_bytes,
        "bytes_per_file": round(queue_bytes / max(messages, 1), 1),
    }
    worker = svc.worker(concurrency, "bigjob", CXR_RESULT_TTL_S=str(ttl_s), CXR_JOB_TTL_S=str(ttl_s))
    try:

        def finished() -> bool:
            try:
                data = svc.call("GET", f"/jobs/{job_id}", timeout=30)["Data"]
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # the record expired: ttl_s shorter than a gap in the job's progress
                    raise RuntimeError(f"job {job_id}'s record expired; raise --big-job-ttl") from None
                raise
            return data.get("status") in ("completed", "failed")

        _wait_until(finished, 600 + 2 * summary_files(folder), f"job {job_id}")
        summary = svc.call("GET", f"/jobs/{job_id}")["Data"]
    finally:
        stop_group(worker)
    during = {"used_memory_peak_mib": round(max(redis_peak.stop()), 2)}
    api = api_rss.stop()
    # Results and job records expire ttl_s after their last write; Redis's active
    # expiry removes them within seconds after that. What stays is what has no expiry
    # (the workers' queue bindings): wait until only those are left.
    persistent = _persistent_keys(client)
    deadline = time.monotonic() + ttl_s + 60
    while client.dbsize() > persistent and time.monotonic() < deadline:
        time.sleep(2)
    after = {"used_memory_mib": _redis_mib(client), "keys": int(client.dbsize()), "keys_without_expiry": persistent}
    callback = [
        float(m["s"])
        for m in FINALIZE_LINE.finditer(worker.log_path.read_text(errors="replace"))
        if m["id"].startswith(job_id)
    ]
    timings = summary["timings"]
    return {
        "files": summary["total"],
        "processed": summary["processed"],
        "skipped": len(summary["skipped"]),
        "concurrency": concurrency,
        "ttl_s": ttl_s,
        "wall_s": timings["wall_s"],
        "queued_s": timings["queued_s"],
        "processing_wall_s": round(timings["wall_s"] - (timings["queued_s"] or 0.0), 2),
        "files_per_s": round(summary["total"] / max(timings["wall_s"] - (timings["queued_s"] or 0.0), 1e-9), 2),
        "broker": queued,
        "api_rss_peak_mib": round(max(api), 1),
        "api_rss_start_mib": round(api[0], 1),
        "redis_before": baseline,
        "redis_during": during,
        "redis_after_expiry": after,
        "redis_growth_after_expiry_mib": round(after["used_memory_mib"] - baseline["used_memory_mib"], 2),
        "callback_s": round(callback[0], 3) if callback else None,
    }


def _persistent_keys(client: Any) -> int:
    """How many keys of the database have no expiry."""
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
    return sum(1 for ttl in pipe.execute() if ttl == -1)


def summary_files(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.dcm"))


def _redis_mib(client: Any) -> float:
    return round(int(client.info("memory")["used_memory"]) / 2**20, 2)


def in_process(files: Sequence[Path], out: Path, predictor: Any) -> dict[str, Any]:
    """``process_file`` over ``files`` in this process, model loaded and warm."""
    from engine.pipeline import process_file
    from inference.dicom_read import ReadOptions

    options = ReadOptions.from_env()
    for sub in ("warmup", "loop"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    process_file(files[0], out / "warmup", predictor, job_id="warmup", options=options)
    t, cpu = time.perf_counter(), time.process_time()
    records = [process_file(f, out / "loop", predictor, job_id="loop", options=options) for f in files]
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    bad = [r for r in records if r["status"] != "processed"]
    assert not bad, bad[:1]
    return {
        "wall_s": round(wall, 2),
        "files_per_s": round(len(files) / wall, 3),
        "mean_file_ms": round(wall * 1000.0 / len(files), 1),
        "cpu_ms_per_file": round(cpu * 1000.0 / len(files), 1),
    }


def single_file_run(path: Path, out: Path, predictor: Any) -> Callable[[], Any]:
    """One in-process single inference of ``path`` (as the worker runs it), warmed up once."""
    from engine.pipeline import process_file

    out.mkdir(parents=True, exist_ok=True)

    def run() -> Any:
        return process_file(path, out, predictor, job_id="single-baseline", include_document=True)

    run()
    return run


def cli_infer(folder: Path, out: Path, env: dict[str, str]) -> dict[str, float]:
    """``cxr infer`` as a user runs it: a fresh process, model load included."""
    t = time.perf_counter()
    subprocess.run(
        [str(BIN / "cxr"), "infer", str(folder), str(out), "--quiet"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t
    return {"wall_s": round(wall, 2), "files_per_s": round(len(list(folder.glob("*.dcm"))) / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--output", default="bench-service.json")
    args = parser.parse_args(argv)

    from demo.phantom_dicom import write_phantoms
    from inference.bundle import read_bundle
    from inference.predict import Predictor, configure_tensorflow

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-service-"))
    folder = work / "in"
    write_phantoms(folder, args.files, seed=5150, size=args.size)
    files = sorted(folder.glob("*.dcm"))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "files": args.files,
        "size": args.size,
    }
    results["cli_infer"] = cli_infer(folder, work / "cli-out", dict(os.environ))
    configure_tensorflow()
    results["in_process"] = in_process(files, work / "inproc-out", Predictor(read_bundle()))
    svc = Service(work, args.redis_url)
    svc.start()
    try:
        for c in (1, 2):
            worker = svc.worker(c, f"bench-c{c}")
            try:
                warm_workers(svc, files, c, work / f"svc-c{c}")
                results[f"service_c{c}"] = bulk_job(svc, folder, work / f"svc-c{c}")
            finally:
                stop_group(worker)
    finally:
        svc.stop()
    base = results["in_process"]["files_per_s"]
    results["ratios"] = {
        "service_c1_vs_in_process": round(results["service_c1"]["files_per_s"] / base, 3),
        "service_c2_vs_c1": round(results["service_c2"]["files_per_s"] / results["service_c1"]["files_per_s"], 3),
        "cli_vs_in_process": round(results["cli_infer"]["files_per_s"] / base, 3),
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
