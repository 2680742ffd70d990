"""Per-stage timings of one 2k x 2k CR, uncompressed and JPEG 2000 (``make bench``).

Stages: read (parse the file), decode (first frame), pixel pipeline (modality LUT,
VOI, polarity), preprocess (resize + normalise), forward alone (for reference) and
forward + Grad-CAM (the one pass the pipeline runs),
source PNG, heatmap PNG, predictions JSON, PDF report. Each stage is the median of
``--repeat`` runs after one warm-up, measured in one process on the same files, so
the figures can be compared side by side. Writes ``bench-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return round(statistics.median(times), 1), out


def stage_timings(path: Path, predictor: Any, repeat: int) -> dict[str, float]:
    import pydicom

    from inference.decode import decode_first_frame
    from inference.dicom_read import build_display_image, read_dicom_image
    from inference.pipeline import render_artifacts
    from reports.images import encode_png, render_heatmap_overlay, to_uint8_display
    from reports.pdf import render_report_pdf
    from reports.predictions import dumps_predictions

    r: dict[str, float] = {}
    r["read_header_and_pixel_bytes"], ds = _median_ms(lambda: pydicom.dcmread(path), repeat)
    r["decode_first_frame"], (stored, info) = _median_ms(lambda: decode_first_frame(ds), repeat)
    r["pixel_pipeline"], _ = _median_ms(lambda: build_display_image(stored, info, ds), repeat)
    image = read_dicom_image(path)
    r["preprocess"], x = _median_ms(lambda: predictor.preprocess(image.pixels), repeat)
    r["forward_only"], _ = _median_ms(lambda: predictor.predict_batch(x[None]), repeat)
    r["forward_gradcam"], analyses = _median_ms(lambda: predictor.analyse_batch(x[None]), repeat)
    analysis = analyses[0]
    r["display_uint8"], display = _median_ms(lambda: to_uint8_display(image.pixels), repeat)
    r["source_png"], source_png = _median_ms(lambda: encode_png(display), repeat)
    r["heatmap_png"], heat_png = _median_ms(
        lambda: encode_png(render_heatmap_overlay(display, analysis.heatmap, "Finding 50.0%")), repeat)
    art = render_artifacts(image, analysis, predictor, job_id="bench", layout="patient", timings_ms={})
    r["predictions_json"], _ = _median_ms(lambda: dumps_predictions(art.document), repeat)
    r["report_pdf"], _ = _median_ms(lambda: render_report_pdf(art.document, source_png, heat_png), repeat)
    # forward_gradcam is the one pass the pipeline runs; forward_only shows its split.
    r["sum_of_stages"] = round(sum(v for k, v in r.items() if k != "forward_only"), 1)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", default="bench-results.json")
    args = parser.parse_args()

    from inference.phantom_dicom import PhantomFileSpec, phantom_dataset
    from inference.phantoms import make_phantom
    from inference.predict import Predictor, configure_tensorflow

    tf_info = configure_tensorflow()
    predictor = Predictor()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "python": platform.python_version(), **tf_info},
                               "image": f"{args.size}x{args.size} CR, MONOCHROME1, 12 bits", "stages_ms": {}}
    phantom = make_phantom(1000, 0, size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        for label, compressed in (("uncompressed", False), ("jpeg2000_lossless", True)):
            spec = PhantomFileSpec("CR", "MONOCHROME1", 12, compressed, True)
            path = Path(tmp) / f"{label}.dcm"
            phantom_dataset(phantom, seed=1000, index=0, spec=spec).save_as(path, enforce_file_format=True)
            results["stages_ms"][label] = stage_timings(path, predictor, args.repeat)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    stages = list(results["stages_ms"]["uncompressed"])
    print(f"{'stage (median ms)':<30} {'uncompressed':>13} {'JPEG 2000':>10}")
    for s in stages:
        print(f"{s:<30} {results['stages_ms']['uncompressed'][s]:>13.1f} "
              f"{results['stages_ms']['jpeg2000_lossless'][s]:>10.1f}")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
