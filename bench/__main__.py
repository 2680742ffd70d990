"""``make bench`` (``python -m bench``): the engine's speed, measured side by side in one run.

On the same files (``cxr phantoms``: CR and DX, half uncompressed, half JPEG 2000):

1. the floor: per-stage times of one process (``bench.stages``), for each bundle;
2. ``cxr infer`` (a fresh process, model load included) and the same loop in-process
   with the model warm, for each bundle;
3. the service: one bulk job through the API with 1 worker process, then 2 (for each
   bundle in ``--service-bundles``);
4. single-inference latency, warm (p50, p95), against the in-process time of the file;
5. a big job (``--big-job-files`` tiny files, 2 worker processes): wall time, broker
   bytes per file, the API's peak memory, Redis memory before, during and after the
   results expire, and the chord callback's duration.

Bundles: ``demo`` (the shipped 85 k-parameter CNN) and ``densenet121`` (DenseNet121 at
224 px with random weights, built by ``bench.bundles`` into ``var/bench/bundles``).
Writes ``bench-results.json`` (every figure, and each target's ratio) and prints a
table. Redis: ``--redis-url`` (default database 9 of 127.0.0.1:6379), flushed before
and after. This machine is shared and noisy: compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench import service as svc_mod
from bench import stages

log = logging.getLogger("bench")
BUNDLES = ("demo", "densenet121")

#: (name, figure, comparison, target) for the table and ``bench-results.json``.
TARGETS = (
    ("service_c1_vs_in_process", "service 1 worker process / in-process (demo)", ">=", 0.9),
    ("service_c2_vs_c1", "service 2 worker processes / 1 (demo)", ">=", 1.7),
    ("in_process_vs_floor", "in-process / floor (demo)", ">=", 0.8),
    ("in_process_vs_floor_densenet121", "in-process / floor (densenet121)", ">=", 0.8),
    ("in_process_vs_floor_cpu", "same, CPU time: floor / in-process (demo)", ">=", 0.8),
    ("in_process_vs_floor_cpu_densenet121", "same, CPU time (densenet121)", ">=", 0.8),
    ("single_overhead_p50_ms", "single inference overhead p50 (ms)", "<", 100.0),
    ("big_job_api_rss_peak_mib", "big job: API peak RSS (MiB)", "<", 300.0),
    ("big_job_redis_growth_after_expiry_mib", "big job: Redis after expiry - before (MiB)", "<", 1.0),
    ("big_job_callback_s", "big job: chord callback (s)", "<", 10.0),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--files", type=int, default=60, help="corpus files (default 60)")
    p.add_argument("--size", type=int, default=2048, help="corpus image side in px (default 2048)")
    p.add_argument("--bundles", default=",".join(BUNDLES), help="floor, cxr infer, in-process (default both)")
    p.add_argument("--service-bundles", default="demo", help="bundles run through the service (default demo)")
    p.add_argument("--single-requests", type=int, default=20, help="timed single inferences (default 20)")
    p.add_argument("--big-job-files", type=int, default=10000, help="files of the big job; 0 skips it")
    p.add_argument("--big-job-size", type=int, default=64, help="image side of the big job's files (default 64)")
    p.add_argument(
        "--big-job-ttl",
        type=int,
        default=120,
        help="CXR_RESULT_TTL_S and CXR_JOB_TTL_S during the run, so expiry is observed (default 120)",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    p.add_argument("--output", default="bench-results.json")
    p.add_argument("--keep", action="store_true", help="keep the work folder (corpus, outputs, logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    if args.big_job_files and args.big_job_ttl < 60:
        raise SystemExit("--big-job-ttl must be at least 60 s: the job record must outlive the workers' start")
    bundles = [b for b in args.bundles.split(",") if b]
    service_bundles = [b for b in args.service_bundles.split(",") if b]
    unknown = set(bundles + service_bundles) - set(BUNDLES)
    if unknown:
        raise SystemExit(f"unknown bundles: {', '.join(sorted(unknown))} (choose from {', '.join(BUNDLES)})")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    try:
        results = run(args, bundles, service_bundles, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["bench_runtime_s"] = round(time.perf_counter() - started, 1)
    results["ratios"], results["targets"] = ratios(results)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(
        f"\nwritten {args.output}; bench ran {results['bench_runtime_s']:.0f} s"
        + (f"; work folder {work}" if args.keep else "")
    )
    return 0


def run(args: argparse.Namespace, bundles: list[str], service_bundles: list[str], work: Path) -> dict[str, Any]:
    from inference.bundle import DEFAULT_BUNDLE_DIR, read_bundle
    from inference.predict import Predictor, configure_tensorflow

    tf_info = configure_tensorflow()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_name(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            **tf_info,
        },
        "settings": {
            k: getattr(args, k)
            for k in ("files", "size", "single_requests", "big_job_files", "big_job_size", "big_job_ttl")
        }
        | {"bundles": bundles, "service_bundles": service_bundles},
        "noisy": "timings on a shared machine; compare ratios within this run",
    }
    folder = work / "in"
    t = time.perf_counter()
    subprocess.run(
        [str(svc_mod.BIN / "cxr"), "phantoms", str(folder), "--count", str(args.files), "--size", str(args.size)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    files = sorted(folder.glob("*.dcm"))
    results["corpus"] = {
        "files": len(files),
        "size": args.size,
        "seconds": round(time.perf_counter() - t, 1),
        "kinds": "CR and DX, MONOCHROME1/2, 8-16 bits; odd indices JPEG 2000 lossless",
    }
    log.info("corpus: %d files of %d px", len(files), args.size)

    bundle_dirs: dict[str, Path] = {"demo": DEFAULT_BUNDLE_DIR}
    if "densenet121" in bundles + service_bundles:
        from bench.bundles import densenet_bundle

        bundle_dirs["densenet121"] = densenet_bundle().path
    predictors: dict[str, Any] = {}
    for name in bundles:
        predictors[name] = predictor = Predictor(read_bundle(bundle_dirs[name]))
        log.info("%s: floor", name)
        results[f"floor_{name}"] = stages.floor(files, predictor, work / f"floor-{name}")
        log.info("%s: cxr infer", name)
        results[f"cli_infer_{name}"] = svc_mod.cli_infer(
            folder, work / f"cli-{name}", dict(os.environ, CXR_MODEL_DIR=str(bundle_dirs[name]))
        )
        log.info("%s: in-process loop", name)
        results[f"in_process_{name}"] = svc_mod.in_process(files, work / f"inproc-{name}", predictor)
    single_file = files[0]  # uncompressed (even index)

    service = svc_mod.Service(work, args.redis_url, env={"CXR_JOB_TTL_S": str(args.big_job_ttl)})
    service.start()
    try:
        for name in service_bundles:
            for c in (1, 2):
                log.info("%s: service with %d worker process(es)", name, c)
                worker = service.worker(c, f"{name}-c{c}", CXR_MODEL_DIR=str(bundle_dirs[name]))
                try:
                    svc_mod.warm_workers(service, files, c, work / f"svc-{name}-c{c}")
                    results[f"service_{name}_c{c}"] = svc_mod.bulk_job(service, folder, work / f"svc-{name}-c{c}")
                    if name == "demo" and c == 1 and args.single_requests:
                        log.info("single inference latency")
                        baseline = (
                            svc_mod.single_file_run(single_file, work / "single-inproc", predictors["demo"])
                            if "demo" in predictors
                            else None
                        )
                        results["single_service_demo"] = svc_mod.single_latency(
                            service, single_file, work / "single-svc", args.single_requests, baseline
                        )
                finally:
                    svc_mod.stop_group(worker)
        if args.big_job_files:
            log.info("big job: writing %d files of %d px", args.big_job_files, args.big_job_size)
            big = work / "big"
            seconds = svc_mod.write_tiny_corpus(big, args.big_job_files, args.big_job_size)
            log.info("big job: running (written in %.0f s)", seconds)
            results["big_job"] = svc_mod.big_job(service, big, work / "big-out", concurrency=2, ttl_s=args.big_job_ttl)
            results["big_job"]["corpus_seconds"] = seconds
    finally:
        service.stop()
    return results


def ratios(r: dict[str, Any]) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    def get(*keys: str) -> Any:
        value: Any = r
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    def div(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    figures: dict[str, float | None] = {
        "service_c1_vs_in_process": div(get("service_demo_c1", "files_per_s"), get("in_process_demo", "files_per_s")),
        "service_c2_vs_c1": div(get("service_demo_c2", "files_per_s"), get("service_demo_c1", "files_per_s")),
        "in_process_vs_floor": div(get("in_process_demo", "files_per_s"), get("floor_demo", "files_per_s")),
        "in_process_vs_floor_densenet121": div(
            get("in_process_densenet121", "files_per_s"), get("floor_densenet121", "files_per_s")
        ),
        "in_process_vs_floor_cpu": div(
            get("floor_demo", "mean_ms", "floor_cpu"), get("in_process_demo", "cpu_ms_per_file")
        ),
        "in_process_vs_floor_cpu_densenet121": div(
            get("floor_densenet121", "mean_ms", "floor_cpu"), get("in_process_densenet121", "cpu_ms_per_file")
        ),
        "cli_vs_in_process": div(get("cli_infer_demo", "files_per_s"), get("in_process_demo", "files_per_s")),
        "service_c1_vs_cli": div(get("service_demo_c1", "files_per_s"), get("cli_infer_demo", "files_per_s")),
        "single_overhead_p50_ms": None,
        "big_job_api_rss_peak_mib": get("big_job", "api_rss_peak_mib"),
        "big_job_redis_growth_after_expiry_mib": get("big_job", "redis_growth_after_expiry_mib"),
        "big_job_callback_s": get("big_job", "callback_s"),
    }
    figures["single_overhead_p50_ms"] = get("single_service_demo", "overhead_p50_ms")
    figures["single_overhead_p95_ms"] = get("single_service_demo", "overhead_p95_ms")
    targets = []
    for key, label, op, target in TARGETS:
        value = figures.get(key)
        met = None if value is None else (value >= target if op == ">=" else value < target)
        targets.append({"name": key, "figure": label, "value": value, "target": f"{op} {target:g}", "met": met})
    return figures, targets


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\nCXR Engine benchmark: {m['cpus']} CPUs ({m['cpu']}), {r['corpus']['files']} files of "
        f"{r['corpus']['size']} px (half JPEG 2000); {r['noisy']}"
    )
    for key in sorted(k for k in r if k.startswith("floor_")):
        stages.print_floor(f"floor, {key.removeprefix('floor_')}", r[key])
    print(f"\n{'run':<44} {'wall s':>8} {'files/s':>8} {'API RSS MiB':>12}")
    for key, row in r.items():
        if key.startswith(("floor_", "cli_infer_", "in_process_", "service_")) and "files_per_s" in row:
            wall = row.get("wall_s", row.get("mean_ms", {}).get("floor", 0.0) * row.get("files", 0) / 1000.0)
            print(f"{key:<44} {wall:>8.1f} {row['files_per_s']:>8.3f} {row.get('api_rss_peak_mib', ''):>12}")
    if "single_service_demo" in r:
        s = r["single_service_demo"]
        print(
            f"\nsingle inference (demo, {s['requests']} warm requests): p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms; "
            f"in-process same file p50 {s.get('in_process_p50_ms')} ms, p95 {s.get('in_process_p95_ms')} ms; "
            f"overhead (paired) p50 {s.get('overhead_p50_ms')} ms, p95 {s.get('overhead_p95_ms')} ms"
        )
    if "big_job" in r:
        b = r["big_job"]
        print(
            f"\nbig job: {b['files']} files of {r['settings']['big_job_size']} px, {b['concurrency']} worker processes: "
            f"{b['processing_wall_s']} s ({b['files_per_s']} files/s), {b['processed']} processed; "
            f"broker {b['broker']['bytes_per_file']} B/file; API RSS peak {b['api_rss_peak_mib']} MiB; Redis "
            f"{b['redis_before']['used_memory_mib']} -> peak {b['redis_during']['used_memory_peak_mib']} -> "
            f"{b['redis_after_expiry']['used_memory_mib']} MiB after expiry; callback {b['callback_s']} s"
        )
    print(f"\n{'target':<48} {'value':>10} {'target':>10} {'met':>6}")
    for t in r["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:g}"
        met = {True: "yes", False: "NO", None: "-"}[t["met"]]
        print(f"{t['figure']:<48} {value:>10} {t['target']:>10} {met:>6}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
