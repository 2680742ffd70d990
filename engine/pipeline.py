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
others are reported as ``superseded``. The same rule holds across jobs (the folder's
``.cxr-engine`` marker carries its image's rank), and the engine replaces only folders
it made itself: a name taken by anything else is an ``output_error`` skip naming the
conflict (``reports.publish``). Layout ``instance`` keeps every image under
``<patient>/<SOP Instance UID>/``.

Data roots (``data_roots``, a worker's ``CXR_DATA_ROOTS``): the input file and the output
folder must lie under them and are reached without following any link
(``reports.beneath``); anything else is an ``outside_data_roots`` skip. Without data
roots (``cxr infer``) the paths are used as given.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.dicom_read import ReadOptions, read_dicom_image
from inference.errors import CxrError, OutputError, OutsideDataRoots, UnreadableDicom, reraise_if_interrupt
from inference.image import DicomImage
from inference.predict import Analysis, Predictor
from reports.beneath import check_under_roots, open_file
from reports.dicom_outputs import build_dicom_outputs, dicom_output_names, encode_dataset, source_header
from reports.images import (
    encode_png,
    heatmap_caption,
    render_heatmap_overlay,
    to_uint8_display,
)
from reports.naming import UnsafePathError, sanitize_patient_id, sanitize_uid_component
from reports.pdf import render_report_pdf
from reports.predictions import (
    build_predictions_document,
    dumps_predictions,
    map_outputs,
)
from reports.publish import LAYOUTS, artifact_names, publish_artifacts

log = logging.getLogger(__name__)


@dataclass
class Artifacts:
    """The four artifacts of one image, in memory, plus where they belong."""

    document: dict[str, Any]
    files: dict[str, bytes]  # file name -> bytes (names from reports.publish.artifact_names)
    kinds: dict[str, str]  # kind (predictions, heatmap, source_image, report) -> file name
    folder_parts: list[str]
    rank: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    dicom_error: str | None = None  # why the DICOM outputs asked for could not be made


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
    dicom_outputs: bool = False,
    data_roots: Sequence[Path] | None = None,
) -> Artifacts:
    """Findings, JSON, PNGs and PDF for one analysed image (decode once, encode once).

    The 8-bit display image is made once and feeds both PNGs; the PDF embeds those
    PNGs' compressed streams as they are (``reports.pdf``), so no pixel is encoded twice.
    ``dicom_outputs`` adds the SC, SR and Encapsulated PDF of ``reports.dicom_outputs``
    (kinds ``dicom_sc``, ``dicom_sr``, ``dicom_pdf``); a source header they cannot be
    built from leaves the four artifacts alone and says why in ``dicom_error``.
    """
    parts = folder_parts_for(image, layout)
    rank = publication_rank(image)
    t = time.perf_counter()
    display = to_uint8_display(image.pixels)  # one conversion, reused by both PNGs and the PDF
    source_png = encode_png(display)
    timings_ms["source_png"] = _ms(t)
    t = time.perf_counter()
    overlay = render_heatmap_overlay(display, analysis.heatmap, heatmap_label(analysis, predictor))
    heatmap_png = encode_png(overlay)
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
    kinds, dicom_error = dict(names), None
    if dicom_outputs:
        t = time.perf_counter()
        try:
            header = read_header(Path(image.path), data_roots)
            built = build_dicom_outputs(header, overlay_bgr=overlay, report_pdf=pdf, document=doc)
            dicom_names = dicom_output_names(parts[0])
            files.update({dicom_names[kind]: encode_dataset(ds) for kind, ds in built.items()})
            kinds.update(dicom_names)
        except CxrError:
            raise
        except Exception as exc:  # noqa: BLE001 (highdicom refuses a header in many ways; the four artifacts stay)
            reraise_if_interrupt(exc)
            dicom_error = f"DICOM outputs not made: {exc}"[:500]
            log.warning("%s: %s", image.path, dicom_error)
        timings_ms["dicom_outputs"] = _ms(t)
    return Artifacts(doc, files, kinds, parts, rank, timings_ms, dicom_error)


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
    findings, thresholds, outputs = map_outputs(
        bundle.labels, analysis.probabilities, bundle.thresholds, bundle.label_map_json(), bundle.normal_label
    )
    heat_label = bundle.labels[analysis.heatmap_index]
    heatmap_info = {
        "method": predictor.heatmap_method,
        "finding": heat_label,
        "maps_to": bundle.label_map[heat_label].condition if heat_label in bundle.label_map else None,
        "confidence": round(float(analysis.probabilities[analysis.heatmap_index]), 4),
        "layer": predictor.gradcam_layer,
        "grid": list(analysis.heatmap.shape),
        "rule": "highest-confidence present label, else highest-confidence label (never the normal label)",
    }
    return build_predictions_document(
        patient=image.patient,
        findings=findings,
        model=bundle.identity(),
        thresholds=thresholds,
        heatmap=heatmap_info,
        provenance=image.provenance,
        timings_ms=timings_ms,
        publication={"job_id": job_id, "rank": rank, "layout": layout, "rule": "greatest rank wins, across jobs"},
        source_path=image.path,
        model_outputs=outputs,
    )


def analyse_file(
    path: Path,
    predictor: Predictor,
    *,
    job_id: str,
    layout: str = "patient",
    options: ReadOptions | None = None,
    patient_id_override: str | None = None,
    data_roots: Sequence[Path] | None = None,
    dicom_outputs: bool = False,
) -> Artifacts:
    """Read, predict and render one file. Raises :class:`CxrError` for a file it refuses
    (``OutsideDataRoots`` for a path outside ``data_roots`` or through a link)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    image = read_input(path, options or ReadOptions.from_env(), patient_id_override, data_roots)
    timings["read_decode"] = _ms(t)
    t = time.perf_counter()
    x = predictor.preprocess(image.pixels)
    timings["preprocess"] = _ms(t)
    t = time.perf_counter()
    analysis = predictor.analyse_batch(x[None])[0]  # raises InferenceError on a model failure
    timings["forward_gradcam"] = _ms(t)
    return render_artifacts(
        image,
        analysis,
        predictor,
        job_id=job_id,
        layout=layout,
        timings_ms=timings,
        dicom_outputs=dicom_outputs,
        data_roots=data_roots,
    )


def read_input(
    path: Path, options: ReadOptions, patient_id_override: str | None, data_roots: Sequence[Path] | None
) -> DicomImage:
    """``read_dicom_image`` of ``path``; under ``data_roots`` the file is opened first
    without following links and read through that descriptor (``/proc/self/fd/N`` names
    the open file itself, not a path to resolve again; a worker needs Linux's ``/proc``,
    which every container has)."""
    if data_roots is None:
        return read_dicom_image(path, options, patient_id_override)
    try:
        fd = open_file(path, data_roots, "the input file")  # OutsideDataRoots passes through
    except OSError as exc:
        raise UnreadableDicom(f"cannot open file: {exc.strerror or exc}") from None
    try:
        image = read_dicom_image(f"/proc/self/fd/{fd}", options, patient_id_override)
    finally:
        os.close(fd)
    return dataclasses.replace(image, path=str(path))


def read_header(path: Path, data_roots: Sequence[Path] | None) -> Any:
    """The source's DICOM header (no pixel data) for the DICOM outputs, read the way
    ``read_input`` reads the file: under ``data_roots`` through a descriptor opened
    without following links."""
    if data_roots is None:
        return source_header(str(path))
    fd = open_file(path, data_roots, "the input file")
    try:
        return source_header(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


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
    data_roots: Sequence[Path] | None = None,
    dicom_outputs: bool = False,
) -> dict[str, Any]:
    """Analyse and publish one file; return its file record (never raises for file problems).

    ``OSError`` while publishing (disk full, read-only, permissions) becomes a skip with
    reason ``output_error``, ``stage: "publish"`` and a detail naming the error,
    so one unwritable folder never loses the rest of a job; so does a name taken by
    something the engine did not make (``OutputError``, the detail names it). An output
    folder outside ``data_roots`` is refused before the input is read
    (``outside_data_roots``, ``stage: "publish"``). ``include_document`` adds the
    predictions document (findings, metadata) to the record, for single inference.
    ``dicom_outputs`` adds the three DICOM objects to the published files (their paths
    under ``outputs``: ``dicom_sc``, ``dicom_sr``, ``dicom_pdf``); when they could not be
    made the record says why in ``dicom_outputs_error``.
    """
    start = time.perf_counter()
    record: dict[str, Any] = {"path": str(path), "status": "skipped", "reason": None, "detail": None}
    if data_roots is not None:
        try:
            check_under_roots(output_root, data_roots, "the output folder")
        except OutsideDataRoots as exc:
            record.update(reason=exc.reason, stage="publish", detail=exc.detail)
            log.warning("skipped %s: %s", path, exc.detail)
            return record
    try:
        art = analyse_file(
            path,
            predictor,
            job_id=job_id,
            layout=layout,
            options=options,
            patient_id_override=patient_id_override,
            data_roots=data_roots,
            dicom_outputs=dicom_outputs,
        )
    except CxrError as exc:
        record.update(reason=exc.reason, detail=exc.detail)
        log.info("skipped %s: %s", path, exc.reason)
        return record
    try:
        t = time.perf_counter()
        outcome = publish_artifacts(
            output_root,
            art.folder_parts,
            art.files,
            job_id=job_id,
            rank=art.rank,
            layout=layout,
            model=predictor.bundle.identity(),
            data_roots=data_roots,
        )
        art.timings_ms["publish"] = _ms(t)
    except (CxrError, UnsafePathError) as exc:
        reason = exc.reason if isinstance(exc, CxrError) else OutputError.reason
        detail = exc.detail if isinstance(exc, CxrError) else str(exc)
        record.update(reason=reason, stage="publish", detail=detail)
        log.warning("skipped %s: %s", path, detail)
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
        kept=_kept_path(outcome.owner),
        outputs={kind: str(outcome.folder / name) for kind, name in art.kinds.items()},
        rank=art.rank,
        result=art.document["result"],
        timings_ms=art.timings_ms,
        transfer_syntax=art.document["provenance"].get("transfer_syntax"),  # the decode-time metric's label
    )
    if art.dicom_error:
        record["dicom_outputs_error"] = art.dicom_error
    if include_document:
        record["document"] = art.document
    return record


def _kept_path(owner: dict[str, Any] | None) -> str | None:
    """The source path of the image a folder holds (its rank's last element)."""
    rank = (owner or {}).get("rank")
    return rank[-1] if isinstance(rank, list) and rank and isinstance(rank[-1], str) else None


def output_error_detail(exc: OSError) -> str:
    """``could not write the output folder (ENOSPC: No space left on device)``: errno name
    and text, never the path (a record may travel further than the operator's log)."""
    name = errno.errorcode.get(exc.errno or 0, exc.__class__.__name__)
    return f"could not write the output folder ({name}: {exc.strerror or 'no detail'})"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 2)
