"""The floor: per-stage times of one process doing one file's work, with nothing else.

Each stage of ``engine.pipeline`` is run and timed on its own, in the order the
pipeline runs them, once per file of the corpus (after one warm-up file): read (parse
header, patient, eligibility), decode (first frame), pixel pipeline (modality LUT, VOI,
polarity), provenance (stored-value hash), preprocess (resize, normalise), forward +
Grad-CAM (the one pass the pipeline runs), 8-bit display image, source PNG, heatmap
overlay, heatmap PNG, predictions JSON (document and serialisation), PDF report. Their
sum is the floor for that file; publishing (the atomic folder write) is measured too but
is not part of the floor. Two reference figures are not summed: the forward pass alone,
and forward + Grad-CAM per image in a batch of ``BATCH`` (does batching pay?).

``python -m bench.stages [--files 4] [--size 2048]`` runs it alone on fresh phantoms;
``python -m bench`` (``make bench``) runs it next to the in-process loop and the service.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

T = TypeVar("T")
BATCH = 4
FLOOR_STAGES = (
    "read",
    "decode",
    "pixel_pipeline",
    "provenance",
    "preprocess",
    "forward_gradcam",
    "display_uint8",
    "source_png",
    "heatmap_overlay",
    "heatmap_png",
    "predictions_json",
    "report_pdf",
)
REFERENCE_STAGES = ("forward_only", f"forward_gradcam_batch{BATCH}_per_image", "publish")


def _timed(timings: dict[str, float], stage: str, fn: Callable[[], T]) -> T:
    """Run ``fn``; record its wall time as ``stage`` and its CPU time as ``cpu:<stage>`` (ms)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    timings[stage] = (time.perf_counter() - start) * 1000.0
    timings[f"cpu:{stage}"] = (time.process_time() - cpu) * 1000.0
    return out


def file_stages(path: Path, predictor: Any, out_dir: Path) -> dict[str, float]:
    """One file's stages, each timed on its own (ms); ``floor`` is the sum of FLOOR_STAGES."""
    import numpy as np

    from engine.pipeline import (
        folder_parts_for,
        heatmap_label,
        predictions_document,
        publication_rank,
    )
    from inference.decode import decode_first_frame
    from inference.dicom_header import (
        ReadOptions,
        check_eligibility,
        read_patient_info,
        record_provenance,
    )
    from inference.dicom_load import load_dataset
    from inference.dicom_read import build_display_image
    from inference.image import DicomImage
    from reports.images import encode_png, render_heatmap_overlay, to_uint8_display
    from reports.pdf import render_report_pdf
    from reports.predictions import dumps_predictions
    from reports.publish import artifact_names, publish_artifacts

    t: dict[str, float] = {}
    options = ReadOptions.from_env()

    def read() -> Any:
        ds = load_dataset(path)
        patient = read_patient_info(ds, None)
        check_eligibility(ds, options)
        return ds, patient

    ds, patient = _timed(t, "read", read)
    stored, info = _timed(t, "decode", lambda: decode_first_frame(ds))
    pixels, record = _timed(t, "pixel_pipeline", lambda: build_display_image(stored, info, ds))
    provenance = _timed(t, "provenance", lambda: record_provenance(ds, stored, info, record))
    image = DicomImage(path=str(path), pixels=pixels, patient=patient, provenance=provenance)
    x = _timed(t, "preprocess", lambda: predictor.preprocess(image.pixels))
    _timed(t, "forward_only", lambda: predictor.predict_batch(x[None]))
    analysis = _timed(t, "forward_gradcam", lambda: predictor.analyse_batch(x[None]))[0]
    batch = np.repeat(x[None], BATCH, axis=0)
    _timed(t, "forward_gradcam_batch", lambda: predictor.analyse_batch(batch))
    t[f"forward_gradcam_batch{BATCH}_per_image"] = t.pop("forward_gradcam_batch") / BATCH
    display = _timed(t, "display_uint8", lambda: to_uint8_display(image.pixels))
    source_png = _timed(t, "source_png", lambda: encode_png(display))
    overlay = _timed(
        t,
        "heatmap_overlay",
        lambda: render_heatmap_overlay(display, analysis.heatmap, heatmap_label(analysis, predictor)),
    )
    heatmap_png = _timed(t, "heatmap_png", lambda: encode_png(overlay))
    rank = publication_rank(image)
    timings: dict[str, float] = {}

    def document() -> Any:
        doc = predictions_document(
            image, analysis, predictor, job_id="floor", layout="patient", rank=rank, timings_ms=timings
        )
        return doc, dumps_predictions(doc)

    doc, json_bytes = _timed(t, "predictions_json", document)
    pdf = _timed(t, "report_pdf", lambda: render_report_pdf(doc, source_png, heatmap_png))
    parts = folder_parts_for(image, "patient")
    names = artifact_names(parts[0])
    files = {
        names["predictions"]: json_bytes,
        names["heatmap"]: heatmap_png,
        names["source_image"]: source_png,
        names["report"]: pdf,
    }
    _timed(
        t,
        "publish",
        lambda: publish_artifacts(out_dir, parts, files, job_id=f"floor-{path.name}", rank=rank, layout="patient"),
    )
    t["floor"] = sum(t[s] for s in FLOOR_STAGES)
    # CPU time (all threads of this process): less disturbed than wall time when other
    # processes share the machine.
    t["floor_cpu"] = sum(t[f"cpu:{s}"] for s in FLOOR_STAGES)
    return {k: round(v, 2) for k, v in t.items() if not k.startswith("cpu:")}


def floor(files: Sequence[Path], predictor: Any, out_dir: Path) -> dict[str, Any]:
    """Per-stage medians and means over ``files`` (after one warm-up file), by transfer syntax too."""
    import pydicom

    for sub in ("warmup", "floor"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    file_stages(files[0], predictor, out_dir / "warmup")
    rows = []
    for path in files:
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        rows.append((syntax.is_compressed, file_stages(path, predictor, out_dir / "floor")))
    stages = [*FLOOR_STAGES, *REFERENCE_STAGES, "floor", "floor_cpu"]

    def summary(selected: list[dict[str, float]]) -> dict[str, Any]:
        if not selected:
            return {}
        return {
            "files": len(selected),
            "median_ms": {s: round(statistics.median(r[s] for r in selected), 1) for s in stages},
            "mean_ms": {s: round(statistics.fmean(r[s] for r in selected), 1) for s in stages},
        }

    result = summary([r for _, r in rows])
    result["files_per_s"] = round(1000.0 / result["mean_ms"]["floor"], 3)
    result["uncompressed"] = summary([r for compressed, r in rows if not compressed])
    result["compressed"] = summary([r for compressed, r in rows if compressed])
    return result


def print_floor(title: str, result: dict[str, Any]) -> None:
    kinds = [k for k in ("uncompressed", "compressed") if result.get(k)]
    print(f"\n{title}: per-stage mean ms over {result['files']} files")
    print(f"{'stage':<36}" + "".join(f"{k:>14}" for k in ["all", *kinds]))
    for stage in result["mean_ms"]:
        values = [result["mean_ms"][stage], *(result[k]["mean_ms"][stage] for k in kinds)]
        print(f"{stage:<36}" + "".join(f"{v:>14.1f}" for v in values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4, help="phantoms (half JPEG 2000)")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--bundle", choices=("demo", "densenet121"), default="demo")
    parser.add_argument("--output", default="bench-stages.json")
    args = parser.parse_args(argv)

    from demo.phantom_dicom import write_phantoms
    from inference.bundle import read_bundle
    from inference.predict import Predictor, configure_tensorflow

    configure_tensorflow()
    if args.bundle == "densenet121":
        from bench.bundles import densenet_bundle

        bundle = densenet_bundle()
    else:
        bundle = read_bundle()
    predictor = Predictor(bundle)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-stages-") as tmp:
        write_phantoms(Path(tmp) / "in", args.files, seed=1000, size=args.size)
        result = floor(sorted((Path(tmp) / "in").glob("*.dcm")), predictor, Path(tmp) / "out")
    Path(args.output).write_text(json.dumps({"bundle": bundle.name, "size": args.size, **result}, indent=2) + "\n")
    print_floor(f"{bundle.name}, {args.size} px", result)
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
