"""Sending a job's DICOM outputs back to the PACS (C-STORE to ``CXR_DICOM_DESTINATION``).

Called by the chord callback (``cxr.finalize_job``) once every file of the job has ended,
before the summary is written: the job reads ``completed`` only when its results are in
the PACS or the sending has given up. What is sent: the ``dicom_sc``, ``dicom_sr`` and
``dicom_pdf`` files of every processed record that owns its folder (a superseded image's
files were never written), as they are on disk.

Failures (destination down, association rejected, a failure status) are retried
``CXR_DICOM_SEND_RETRIES`` times (default 4) with exponential backoff from
``CXR_DICOM_SEND_BACKOFF_S`` (default 2 s: 2, 4, 8, 16 s), but never past half the
callback's soft time limit, so the summary is always written. Then the summary says
``"dicom_send_error": "<why>"`` and ``"dicom_send": {"status": "failed", ...}``; the
artifacts on disk are untouched and the job is not failed (its inference succeeded; the
operator re-sends from the output folder). A success adds ``"dicom_send": {"status":
"sent", "destination", "instances", "attempts"}``. Each attempt sends every file again:
their UIDs are deterministic, so a PACS keeps one copy.

``CXR_DICOMWEB_URL`` (a DICOMweb root, e.g. ``http://pacs:8042/dicom-web``) adds a STOW-RS
of the same files (dicomweb-client), for PACSs that prefer HTTP; its outcome is
``dicomweb_send``, with the same retries, and a failure also ends in ``dicom_send_error``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.dicom_outputs import DICOM_SUFFIXES
from workers.dicom_node import NodeConfigError, parse_destination, set_nodelay

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_S = 2.0
TIMEOUT_S = 10.0  # association, DIMSE and network timeouts of one attempt
OK_STATUSES = {0x0000, 0xB000, 0xB007, 0xB006}  # success, and the warnings (coercion, elements discarded)


class SendError(Exception):
    """One attempt failed; the message says why (no patient data)."""


@dataclass(frozen=True)
class SendSettings:
    destination: tuple[str, str, int] | None = None
    calling_ae: str = "CXR_ENGINE"
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    dicomweb_url: str | None = None

    @property
    def enabled(self) -> bool:
        return self.destination is not None or bool(self.dicomweb_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SendSettings:
        env = os.environ if environ is None else environ
        raw = env.get("CXR_DICOM_DESTINATION", "").strip()
        try:
            retries = int(env.get("CXR_DICOM_SEND_RETRIES", "").strip() or DEFAULT_RETRIES)
            backoff = float(env.get("CXR_DICOM_SEND_BACKOFF_S", "").strip() or DEFAULT_BACKOFF_S)
        except ValueError as exc:
            raise NodeConfigError(f"CXR_DICOM_SEND_RETRIES / CXR_DICOM_SEND_BACKOFF_S: {exc}") from None
        return cls(
            destination=parse_destination(raw) if raw else None,
            calling_ae=env.get("CXR_DICOM_AE_TITLE", "").strip() or "CXR_ENGINE",
            retries=max(0, retries),
            backoff_s=max(0.0, backoff),
            dicomweb_url=env.get("CXR_DICOMWEB_URL", "").strip().rstrip("/") or None,
        )

    @property
    def shown(self) -> str:
        if self.destination is None:
            return ""
        ae, host, port = self.destination
        return f"{ae}@{host}:{port}"


def output_files(records: Iterable[Mapping[str, Any]]) -> list[Path]:
    """The DICOM outputs on disk of the job's processed, published records."""
    files = []
    for record in records:
        if record.get("status") != "processed" or not record.get("published", True):
            continue
        for kind in DICOM_SUFFIXES:
            path = (record.get("outputs") or {}).get(kind)
            if path and Path(path).is_file():
                files.append(Path(path))
    return files


def c_store(files: list[Path], destination: tuple[str, str, int], calling_ae: str) -> None:
    """Send ``files`` over one association; raises :class:`SendError` on any failure."""
    from pydicom import dcmread
    from pynetdicom import AE, evt

    ae_title, host, port = destination
    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for sop_class, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, syntax)
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, lambda event: set_nodelay(event.assoc))]
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=handlers)
    if assoc.is_rejected:
        raise SendError(f"{ae_title}@{host}:{port} rejected the association")
    if not assoc.is_established:
        raise SendError(f"no association with {ae_title}@{host}:{port} (unreachable or aborted)")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else None
            if code not in OK_STATUSES:
                shown = "no response" if code is None else f"0x{code:04X}"
                raise SendError(f"{ae_title}@{host}:{port} answered {shown} to a C-STORE")
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


def stow_rs(files: list[Path], url: str) -> None:
    """Store ``files`` with one STOW-RS request (dicomweb-client); raises on any failure,
    an HTTP error or a ``FailedSOPSequence`` in the answer (a partial failure)."""
    from dicomweb_client.api import DICOMwebClient
    from pydicom import dcmread

    client = DICOMwebClient(url=url, timeout=TIMEOUT_S * 3)
    answer = client.store_instances(datasets=[dcmread(f) for f in files])
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        raise SendError(f"STOW-RS to {url}: {len(failed)} instance(s) refused")


Sender = Callable[[list[Path], tuple[str, str, int], str], None]


def deliver(
    records: Iterable[Mapping[str, Any]],
    settings: SendSettings,
    *,
    budget_s: float,
    send: Sender = c_store,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Send the job's DICOM outputs; the keys to add to its summary (module docstring).

    C-STORE (``dicom_send``) and STOW-RS (``dicomweb_send``) are tried each on its own,
    with the same retries; a failure of either ends in ``dicom_send_error``."""
    files = output_files(records)
    if not settings.enabled or not files:
        return {}
    start = time.monotonic()
    result: dict[str, Any] = {}
    errors: list[str] = []
    targets: list[tuple[str, str, Callable[[], None]]] = []
    if settings.destination is not None:
        destination = settings.destination
        targets.append(("dicom_send", settings.shown, lambda: send(files, destination, settings.calling_ae)))
    if settings.dicomweb_url:
        url = settings.dicomweb_url
        targets.append(("dicomweb_send", url, lambda: stow_rs(files, url)))
    for key, shown, attempt_once in targets:
        outcome, error = _with_retries(attempt_once, shown, len(files), settings, start, budget_s, sleep)
        result[key] = outcome
        if error:
            errors.append(error)
    if errors:
        result["dicom_send_error"] = "; ".join(errors)
    return result


def _with_retries(
    attempt_once: Callable[[], None],
    shown: str,
    count: int,
    settings: SendSettings,
    start: float,
    budget_s: float,
    sleep: Callable[[float], None],
) -> tuple[dict[str, Any], str | None]:
    attempt, last = 0, ""
    while True:
        attempt += 1
        try:
            attempt_once()
        except Exception as exc:  # noqa: BLE001 (pynetdicom, HTTP and the network fail in many ways)
            last = str(exc) if isinstance(exc, SendError) else f"{type(exc).__name__}: {exc}"
            log.warning("sending %d DICOM object(s) to %s, attempt %d: %s", count, shown, attempt, last)
        else:
            log.info("%d DICOM object(s) sent to %s (attempt %d)", count, shown, attempt)
            return {"status": "sent", "destination": shown, "instances": count, "attempts": attempt}, None
        wait = settings.backoff_s * 2 ** (attempt - 1)
        if attempt > settings.retries or time.monotonic() - start + wait > budget_s:
            break
        sleep(wait)
    detail = f"{count} DICOM object(s) not sent to {shown} after {attempt} attempt(s): {last}"
    log.error("%s", detail)
    return {"status": "failed", "destination": shown, "instances": count, "attempts": attempt}, detail
