"""One DICOM file in, four artifacts out: the engine's unit of work.

``analyse_file`` reads, predicts and renders an image into in-memory artifacts;
``process_file`` also publishes them (atomically) into the output folder and never
raises for a per-file problem: it returns a *file record* that says what happened.
The CLI calls it in-process; the Celery task (a later layer) calls the same function.

File record (JSON-serialisable)::

    {"path", "status": "processed" | "skipped", "reason", "detail",
     "patient_id", "folder", "outputs": {...}, "rank": [...], "published": bool,
     "timings_ms": {...}}

Patient folders (layout ``patient``): when several images of one job share a patient
folder, the folder holds the artifacts of exactly one image, never a mix. The rule is
deterministic and does not depend on processing order: the image with the greatest
*rank* wins, where rank = [acquisition date-time, SOP Instance UID, source path]
(the most recent acquisition; ties broken by the larger UID, then the path). The
others are reported as ``superseded``. A folder left by an earlier job is replaced.
Layout ``instance`` keeps every image under ``<patient>/<SOP Instance UID>/``.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.dicom_read import ReadOptions, read_dicom_image
from inference.errors import CxrError
from inference.image import DicomImage
from inference.predict import Analysis, Predictor
from reports.images import (
    encode_png,
    heatmap_caption,
    render_heatmap_overlay,
    to_uint8_display,
)
from reports.naming import sanitize_patient_id, sanitize_uid_component
from reports.pdf import render_report_pdf
from reports.predictions import (
    build_findings,
    build_predictions_document,
    dumps_predictions,
)
from reports.publish import LAYOUTS, artifact_names, publish_artifacts

log = logging.getLogger(__name__)

HEATMAP_METHOD = "grad-cam"


@dataclass
class Artifacts:
    """The four artifacts of one image, in memory, plus where they belong."""

    document: dict[str, Any]
    files: dict[str, bytes]  # file name -> bytes (names from reports.publish.artifact_names)
    kinds: dict[str, str]  # kind (predictions, heatmap, source_image, report) -> file name
    folder_parts: list[str]
    rank: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)


def publication_rank(image: DicomImage) -> list[str]:
    p = image.patient
    return [p.acquisition_datetime, p.sop_instance_uid, image.path]


def folder_parts_for(image: DicomImage, layout: str) -> list[str]:
    patient_folder = sanitize_patient_id(image.patient.patient_id)
    if layout == "instance":
        uid = image.patient.sop_instance_uid or image.provenance.get("pixel_sha256", "unknown")[:16]
        return [patient_folder, sanitize_uid_component(uid)]
    return [patient_folder]


def render_artifacts(
    image: DicomImage,
    analysis: Analysis,
    predictor: Predictor,
    *,
    job_id: str,
    layout: str,
    timings_ms: dict[str, float],
) -> Artifacts:
    """Findings, JSON, PNGs and PDF for one analysed image (decode once, encode once).

    The 8-bit display image is made once and feeds both PNGs; the PDF embeds those
    PNGs' compressed streams as they are (``reports.pdf``), so no pixel is encoded twice.
    """
    parts = folder_parts_for(image, layout)
    rank = publication_rank(image)
    t = time.perf_counter()
    display = to_uint8_display(image.pixels)  # one conversion, reused by both PNGs and the PDF
    source_png = encode_png(display)
    timings_ms["source_png"] = _ms(t)
    t = time.perf_counter()
    heatmap_png = encode_png(render_heatmap_overlay(display, analysis.heatmap, heatmap_label(analysis, predictor)))
    timings_ms["heatmap_png"] = _ms(t)
    t = time.perf_counter()
    doc = predictions_document(
        image, analysis, predictor, job_id=job_id, layout=layout, rank=rank, timings_ms=timings_ms
    )
    pdf = render_report_pdf(doc, source_png, heatmap_png)
    timings_ms["report_pdf"] = _ms(t)
    # The JSON is serialised last so it carries every stage's time but its own
    # serialisation and the publish step (those are in the file record).
    doc["timings_ms"] = dict(timings_ms)
    names = artifact_names(parts[0])
    t = time.perf_counter()
    json_bytes = dumps_predictions(doc)
    timings_ms["predictions_json"] = _ms(t)
    files = {
        names["predictions"]: json_bytes,
        names["heatmap"]: heatmap_png,
        names["source_image"]: source_png,
        names["report"]: pdf,
    }
    return Artifacts(doc, files, names, parts, rank, timings_ms)


def heatmap_label(analysis: Analysis, predictor: Predictor) -> str:
    """The overlay's caption: the heatmap's finding and its confidence."""
    index = analysis.heatmap_index
    return heatmap_caption(predictor.bundle.labels[index], float(analysis.probabilities[index]))


def predictions_document(
    image: DicomImage,
    analysis: Analysis,
    predictor: Predictor,
    *,
    job_id: str,
    layout: str,
    rank: list[str],
    timings_ms: dict[str, float],
) -> dict[str, Any]:
    """The predictions document (JSON content, and what the PDF shows) for one image."""
    bundle = predictor.bundle
    findings = build_findings(bundle.labels, analysis.probabilities, bundle.thresholds)
    heat_label = bundle.labels[analysis.heatmap_index]
    heatmap_info = {
        "method": HEATMAP_METHOD,
        "finding": heat_label,
        "confidence": round(float(analysis.probabilities[analysis.heatmap_index]), 4),
        "layer": bundle.gradcam_layer,
        "grid": list(analysis.heatmap.shape),
        "rule": "highest-confidence present finding, else highest-confidence finding",
    }
    return build_predictions_document(
        patient=image.patient,
        findings=findings,
        model=bundle.identity(),
        thresholds=bundle.thresholds,
        heatmap=heatmap_info,
        provenance=image.provenance,
        timings_ms=timings_ms,
        publication={"job_id": job_id, "rank": rank, "layout": layout, "rule": "greatest rank wins within a job"},
        source_path=image.path,
    )


def analyse_file(
    path: Path,
    predictor: Predictor,
    *,
    job_id: str,
    layout: str = "patient",
    options: ReadOptions | None = None,
    patient_id_override: str | None = None,
) -> Artifacts:
    """Read, predict and render one file. Raises :class:`CxrError` for a file it refuses."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    image = read_dicom_image(path, options or ReadOptions.from_env(), patient_id_override)
    timings["read_decode"] = _ms(t)
    t = time.perf_counter()
    x = predictor.preprocess(image.pixels)
    timings["preprocess"] = _ms(t)
    t = time.perf_counter()
    analysis = predictor.analyse_batch(x[None])[0]  # raises InferenceError on a model failure
    timings["forward_gradcam"] = _ms(t)
    return render_artifacts(image, analysis, predictor, job_id=job_id, layout=layout, timings_ms=timings)


def process_file(
    path: Path,
    output_root: Path,
    predictor: Predictor,
    *,
    job_id: str,
    layout: str = "patient",
    options: ReadOptions | None = None,
    patient_id_override: str | None = None,
    include_document: bool = False,
) -> dict[str, Any]:
    """Analyse and publish one file; return its file record (never raises for file problems).

    ``OSError`` while publishing (disk full, read-only, permissions) becomes a skip with
    reason ``output_error``, ``stage: "publish"`` and a detail naming the error,
    so one unwritable folder never loses the rest of a job. ``include_document`` adds
    the predictions document (findings, metadata) to the record, for single inference.
    """
    start = time.perf_counter()
    record: dict[str, Any] = {"path": str(path), "status": "skipped", "reason": None, "detail": None}
    try:
        art = analyse_file(
            path, predictor, job_id=job_id, layout=layout, options=options, patient_id_override=patient_id_override
        )
        t = time.perf_counter()
        outcome = publish_artifacts(
            output_root, art.folder_parts, art.files, job_id=job_id, rank=art.rank, layout=layout
        )
        art.timings_ms["publish"] = _ms(t)
    except CxrError as exc:
        record.update(reason=exc.reason, detail=exc.detail)
        log.info("skipped %s: %s", path, exc.reason)
        return record
    except OSError as exc:
        record.update(reason="output_error", stage="publish", detail=output_error_detail(exc))
        log.warning("skipped %s: output not writable: %s", path, record["detail"])
        return record
    art.timings_ms["total"] = _ms(start)
    record.update(
        status="processed",
        patient_id=art.document["metadata"]["patient_id"],
        folder=str(outcome.folder),
        published=outcome.status == "published",
        outputs={kind: str(outcome.folder / name) for kind, name in art.kinds.items()},
        rank=art.rank,
        result=art.document["result"],
        timings_ms=art.timings_ms,
        transfer_syntax=art.document["provenance"].get("transfer_syntax"),  # the decode-time metric's label
    )
    if include_document:
        record["document"] = art.document
    return record


def output_error_detail(exc: OSError) -> str:
    """``could not write the output folder (ENOSPC: No space left on device)``: errno name
    and text, never the path (a record may travel further than the operator's log)."""
    name = errno.errorcode.get(exc.errno or 0, exc.__class__.__name__)
    return f"could not write the output folder ({name}: {exc.strerror or 'no detail'})"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 2)
