"""What the Prometheus metrics cost, per file and per request, measured side by side in one run.

``python -m bench.metrics_cost [--files 6] [--size 1024] [--rounds 7] [--requests 300]
[--redis-url redis://127.0.0.1:6379/9]``; prints a table and, last, one JSON line.

The metrics run as deployed: prometheus-client's multiprocess mode (values in memory-mapped
files in ``PROMETHEUS_MULTIPROC_DIR``, a temporary folder here), which is what every
gunicorn process and prefork child pays.

* **Per file**: for each file, ``process_file`` (read, predict, render, publish, as a
  worker runs it) is timed, then what a worker adds for that file's record
  (``monitoring.delivery`` + ``monitoring.file_done``: two counters and one histogram
  observation per stage), repeated many times to be measurable; the ratio is hook time /
  file time. The same files are also processed alternately with and without the hooks
  (A/B), to show the difference is below the run-to-run noise.
* **Per request**: two apps made by ``api.create_app`` in this process, one with the
  request-metrics hooks, one with them removed; blocks of requests alternate between
  them (``GET /ping``: the cheapest route, so the largest ratio; ``GET /jobs/<id>`` with
  a token: a typical authenticated route, Redis included); the median of the blocks'
  mean per-request times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HOOK_REPEATS = 200
#: CPU time of this process (all its threads): less disturbed by other load than wall time,
#: and what the metrics take from a shared machine.
clock = time.process_time


def use_multiprocess_mode() -> Path:
    """Before any metric value exists: file-backed values, as in the API and the workers."""
    os.environ["CXR_METRICS_PORT"] = os.environ.get("CXR_METRICS_PORT") or "9"  # only to enable; nothing is served
    from engine import monitoring

    folder = monitoring.prepare_multiprocess("bench")
    assert folder is not None
    return folder


def file_cost(files: list[Path], predictor: Any, out: Path, rounds: int = 1) -> dict[str, Any]:
    from engine import monitoring
    from engine.pipeline import process_file

    file_ms, hook_us, with_hooks, without_hooks = [], [], [], []
    for sub in (
        "warm",
        *(f"plain-{r}" for r in range(rounds)),
        *(f"ab-{r}-{h}" for r in range(rounds) for h in (0, 1)),
    ):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for r in range(rounds):
        for i, path in enumerate(files):
            t = clock()
            record = process_file(path, out / f"plain-{r}", predictor, job_id=f"bench-{r}")
            plain = clock() - t
            file_ms.append(plain * 1000.0)
            t = clock()
            for _ in range(HOOK_REPEATS):
                monitoring.delivery("process", 0)
                monitoring.file_done(record, "bulk")
            hook_us.append((clock() - t) / HOOK_REPEATS * 1e6)
            # A/B on the same file, the order alternating so that warm-up favours neither.
            pair = {}
            for hooked in (i % 2 == 0, i % 2 == 1):
                t = clock()
                rec = process_file(path, out / f"ab-{r}-{int(hooked)}", predictor, job_id=f"bench-ab-{r}")
                if hooked:
                    monitoring.delivery("process", 0)
                    monitoring.file_done(rec, "bulk")
                pair[hooked] = (clock() - t) * 1000.0
            with_hooks.append(pair[True])
            without_hooks.append(pair[False])
    mean_file_ms, mean_hook_us = statistics.mean(file_ms), statistics.mean(hook_us)
    return {
        "files": len(file_ms),
        "stages_per_file": len(record.get("timings_ms") or {}),
        "mean_file_ms": round(mean_file_ms, 2),
        "hook_us_per_file": round(mean_hook_us, 2),
        "ratio": mean_hook_us / 1000.0 / mean_file_ms,
        "ab_mean_ms_with": round(statistics.mean(with_hooks), 2),
        "ab_mean_ms_without": round(statistics.mean(without_hooks), 2),
        "ab_median_paired_diff_ms": round(statistics.median(a - b for a, b in zip(with_hooks, without_hooks)), 2),
        "ab_paired_diff_stdev_ms": (
            round(statistics.stdev(a - b for a, b in zip(with_hooks, without_hooks)), 2) if len(file_ms) > 1 else 0.0
        ),
    }


def without_request_metrics(app: Any) -> Any:
    """The same app with the request-metrics hooks taken out (the bench's control)."""
    hooks = {"_start_clock", "_count"}
    app.before_request_funcs[None] = [
        f for f in app.before_request_funcs[None] if getattr(f, "__name__", "") not in hooks
    ]
    app.after_request_funcs[None] = [
        f for f in app.after_request_funcs[None] if getattr(f, "__name__", "") not in hooks
    ]
    return app


def request_cost(redis_url: str, data_root: Path, requests: int, rounds: int) -> dict[str, Any]:
    from api import create_app
    from api.auth import issue_token
    from engine import monitoring

    config = {
        "REDIS_URL": redis_url,
        "CXR_JWT_SECRET": "bench-" + "s" * 40,
        "CXR_DATA_ROOTS": str(data_root),
        "CXR_AUTH_FAIL_LIMIT": "100000 per minute",
    }
    with_metrics, without = create_app(config), without_request_metrics(create_app(config))
    token = issue_token(with_metrics, "bench")
    routes = {"GET /ping": ("/ping", {}), "GET /jobs/<id>": ("/jobs/" + "0" * 32, {"Authorization": token})}
    results: dict[str, Any] = {}
    for name, (path, headers) in routes.items():
        blocks: dict[str, list[float]] = {"with": [], "without": []}
        clients = {"with": with_metrics.test_client(), "without": without.test_client()}
        for r in range(rounds):
            for label in ("with", "without") if r % 2 == 0 else ("without", "with"):
                client = clients[label]
                t = clock()
                for _ in range(requests):
                    client.get(path, headers=headers)
                blocks[label].append((clock() - t) / requests * 1e6)
        on, off = statistics.median(blocks["with"]), statistics.median(blocks["without"])
        t = clock()
        for _ in range(requests):
            monitoring.request_done("/jobs/<job_id>", "GET", 404, 0.003)
        results[name] = {
            "hook_us": round((clock() - t) / requests * 1e6, 1),
            "us_with": round(on, 1),
            "us_without": round(off, 1),
            "us_added": round(on - off, 1),
            "ratio": (on - off) / off,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7, help="request blocks per app and route")
    parser.add_argument("--requests", type=int, default=300, help="requests per block")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args(argv)

    folder = use_multiprocess_mode()
    from demo.phantom_dicom import write_phantoms
    from inference.predict import Predictor, configure_tensorflow

    with tempfile.TemporaryDirectory(prefix="cxr-bench-metrics-") as tmp:
        work = Path(tmp)
        write_phantoms(work / "in", args.files, seed=11, size=args.size)
        configure_tensorflow()
        predictor = Predictor()
        files = sorted((work / "in").glob("*.dcm"))
        from engine.pipeline import process_file

        (work / "warm").mkdir()
        process_file(files[0], work / "warm", predictor, job_id="warm")  # first-call costs out of the way
        per_file = file_cost(files, predictor, work / "out")
        per_request = request_cost(args.redis_url, work, args.requests, args.rounds)

    print(f"metrics in multiprocess mode ({folder})")
    print(
        f"per file ({per_file['files']} files of {args.size} px, {per_file['stages_per_file']} stages): "
        f"file {per_file['mean_file_ms']:.1f} ms, metrics {per_file['hook_us_per_file']:.1f} us "
        f"= {per_file['ratio']:.2e} of the file; A/B {per_file['ab_mean_ms_with']:.1f} ms with, "
        f"{per_file['ab_mean_ms_without']:.1f} ms without, median paired difference "
        f"{per_file['ab_median_paired_diff_ms']:+.1f} ms (stdev {per_file['ab_paired_diff_stdev_ms']:.1f} ms)"
    )
    for route, r in per_request.items():
        print(
            f"per request {route}: {r['us_with']:.0f} us with, {r['us_without']:.0f} us without, "
            f"{r['us_added']:+.0f} us = {100 * r['ratio']:+.1f} % (the counting alone: {r['hook_us']:.1f} us)"
        )
    print(json.dumps({"per_file": per_file, "per_request": per_request, "size": args.size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
