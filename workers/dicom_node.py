"""``cxr dicom-node``: a DICOM Storage SCP that turns received studies into bulk jobs.

How a hospital plugs the engine in: the PACS (or a modality) sends images by C-STORE to
this node's AE title and port; the node spools them, waits until the study is quiet,
and submits it through the same Celery path as ``POST /bulk_inference`` (one task per
file, chord callback, a job record visible through ``GET /jobs/<id>`` and Flower), with
``dicom_outputs`` on. Sending the results back is the chord callback's
(``workers.dicom_send``). It lives in ``workers/`` beside ``workers.canvas``, which it
calls; it imports neither Flask nor TensorFlow.

Receiving (pynetdicom):

* every storage SOP class is accepted, in the uncompressed, deflated, JPEG (baseline,
  extended, lossless), JPEG 2000 and RLE transfer syntaxes: a PACS that pushes a whole
  study must not see a refused context (it would retry for ever). What is not a chest
  radiograph (a CT slice) is answered success, processed by the engine's usual rules and
  listed as an ``unsupported_modality`` skip in the job summary. C-ECHO is answered;
* ``CXR_DICOM_ALLOWED_AES`` (comma-separated ``AE`` or ``AE@address``; empty: anyone) is
  checked when the association is requested: anything else is rejected (A-ASSOCIATE-RJ,
  "calling AE title not recognised") before any data is sent;
* an instance is written atomically (``<spool>/.tmp``, fsync, rename, fsync of the
  folder) to ``<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` *before* the C-STORE is
  answered success, as the bytes the peer sent (no decode, no re-encode). A disk error
  answers 0xA700 (out of resources), a dataset without usable UIDs 0xC000: never
  success. A re-sent SOP Instance UID keeps the first file (one file per instance).
  The engine's own outputs (Manufacturer "CXR Engine") are answered success and dropped:
  a PACS that forwards "the whole study" again sends our SC, SR and PDF back with it, and
  analysing them would only add skips (seen against Orthanc: a re-sent study became a job
  of 12 files, all our own).

Submitting: a study counts as complete after ``CXR_DICOM_STABLE_S`` (default 30 s)
without a new instance (the quiet-period heuristic of Orthanc's ``StableAge`` and MONAI's
Informatics Gateway; nothing in DIMSE says a study is complete). Then its instances not
yet submitted *for this model* (a ledger ``<spool>/<study>/.submitted-<weights sha
prefix>`` lists them) become one job, in layout ``instance`` (every image its own
folder under ``CXR_DICOM_OUTPUT``: layout ``patient`` would keep one image per patient
and lose the others' DICOM outputs). A study that gains instances later gets a second job
for the new ones only; a re-sent study gets none; a new model version processes the
spool's studies again when they are re-sent. The ledger is written after the job is
sent, so a crash in between submits the study again on restart (at least once; the
outputs' UIDs are deterministic, so the PACS discards the duplicates). On start the node
schedules every spooled study with unsubmitted instances. Submission failures (Redis
down) are logged and retried one quiet period later; the files stay in the spool.

Logs: one line per association (calling AE, address, instances stored) and one per
submitted study (Study Instance UID, instance count, job id); never a patient's name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from reports.dicom_outputs import MANUFACTURER as OWN_MANUFACTURER

log = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "CXR_ENGINE"
DEFAULT_PORT = 11112
DEFAULT_STABLE_S = 30.0
SPOOL_TEMP = ".tmp"
LEDGER_PREFIX = ".submitted-"
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class NodeConfigError(ValueError):
    """A node setting the operator must fix; the message names the variable."""


@dataclass(frozen=True)
class AllowEntry:
    ae_title: str
    address: str | None = None

    def matches(self, ae_title: str, address: str) -> bool:
        return self.ae_title == ae_title and (self.address is None or self.address == address)


def parse_allowed(text: str) -> tuple[AllowEntry, ...]:
    """``"PACS1, MODALITY@10.0.0.7"`` -> entries; empty -> () (anyone may associate)."""
    entries = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        ae, _, address = item.partition("@")
        if not ae.strip() or len(ae.strip()) > 16:
            raise NodeConfigError(f"CXR_DICOM_ALLOWED_AES: {item!r} is not AE or AE@address (AE: 1-16 characters)")
        entries.append(AllowEntry(ae.strip(), address.strip() or None))
    return tuple(entries)


def parse_destination(text: str) -> tuple[str, str, int]:
    """``"AE@host:port"`` -> (AE title, host, port)."""
    ae, sep, rest = text.strip().partition("@")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not ae or not host or not port.isdigit() or len(ae) > 16:
        raise NodeConfigError(f"CXR_DICOM_DESTINATION must be AE@host:port, got {text!r}")
    return ae, host.strip("[]"), int(port)


def _data_roots(environ: dict[str, str]) -> list[Path]:
    parts = [p for p in environ.get("CXR_DATA_ROOTS", "").split(os.pathsep) if p.strip()] or [os.getcwd()]
    return [Path(os.path.realpath(p.strip())) for p in parts]


@dataclass(frozen=True)
class NodeSettings:
    """The node's ``CXR_DICOM_*`` settings (README, configuration table)."""

    ae_title: str = DEFAULT_AE_TITLE
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    allowed: tuple[AllowEntry, ...] = ()
    stable_s: float = DEFAULT_STABLE_S
    spool: Path = Path("dicom-spool")
    output: Path = Path("dicom-results")
    roots: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> NodeSettings:
        env = dict(os.environ if environ is None else environ)
        roots = _data_roots(env)
        ae = env.get("CXR_DICOM_AE_TITLE", "").strip() or DEFAULT_AE_TITLE
        if len(ae) > 16:
            raise NodeConfigError(f"CXR_DICOM_AE_TITLE is at most 16 characters, got {ae!r}")
        try:
            port = int(env.get("CXR_DICOM_PORT", "").strip() or DEFAULT_PORT)
            stable = float(env.get("CXR_DICOM_STABLE_S", "").strip() or DEFAULT_STABLE_S)
        except ValueError as exc:
            raise NodeConfigError(f"CXR_DICOM_PORT / CXR_DICOM_STABLE_S: {exc}") from None
        if not 0 < port < 65536 or stable < 0:
            raise NodeConfigError("CXR_DICOM_PORT must be 1-65535 and CXR_DICOM_STABLE_S >= 0")
        spool = Path(os.path.realpath(env.get("CXR_DICOM_SPOOL", "").strip() or roots[0] / "dicom-spool"))
        output = Path(os.path.realpath(env.get("CXR_DICOM_OUTPUT", "").strip() or roots[0] / "dicom-results"))
        for name, path in (("CXR_DICOM_SPOOL", spool), ("CXR_DICOM_OUTPUT", output)):
            if not any(path == root or root in path.parents for root in roots):
                raise NodeConfigError(f"{name} ({path}) must lie under CXR_DATA_ROOTS")
        return cls(
            ae_title=ae,
            host=env.get("CXR_DICOM_HOST", "").strip() or "0.0.0.0",
            port=port,
            allowed=parse_allowed(env.get("CXR_DICOM_ALLOWED_AES", "")),
            stable_s=stable,
            spool=spool,
            output=output,
            roots=tuple(roots),
        )


def valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID.match(value))


class Spool:
    """Received instances on disk: ``<root>/<study>/<sop>.dcm`` and each study's ledgers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / SPOOL_TEMP).mkdir(parents=True, exist_ok=True)

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> bool:
        """Write one instance atomically; False when that SOP Instance UID is already here.

        Raises ``ValueError`` for UIDs that are not DICOM UIDs (they name files) and
        ``OSError`` from the disk; nothing is left half-written either way.
        """
        if not valid_uid(study_uid) or not valid_uid(sop_uid):
            raise ValueError("StudyInstanceUID or SOPInstanceUID is not a valid UID")
        folder = self.root / study_uid
        target = folder / f"{sop_uid}.dcm"
        if target.exists():
            return False
        temp = self.root / SPOOL_TEMP / f"{uuid.uuid4().hex}.part"
        try:
            with open(temp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            folder.mkdir(exist_ok=True)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(folder)
        return True

    def studies(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and valid_uid(p.name))

    def instances(self, study_uid: str) -> list[Path]:
        return sorted((self.root / study_uid).glob("*.dcm"))

    def _ledger(self, study_uid: str, model_key: str) -> Path:
        return self.root / study_uid / f"{LEDGER_PREFIX}{model_key}"

    def submitted(self, study_uid: str, model_key: str) -> set[str]:
        try:
            return set(self._ledger(study_uid, model_key).read_text(encoding="ascii").split())
        except FileNotFoundError:
            return set()

    def pending(self, study_uid: str, model_key: str) -> list[Path]:
        """The study's instances not yet submitted for ``model_key``."""
        done = self.submitted(study_uid, model_key)
        return [p for p in self.instances(study_uid) if p.stem not in done]

    def mark_submitted(self, study_uid: str, model_key: str, files: Sequence[Path]) -> None:
        with open(self._ledger(study_uid, model_key), "a", encoding="ascii") as fh:
            fh.write("".join(f"{p.stem}\n" for p in files))
            fh.flush()
            os.fsync(fh.fileno())


#: ``submit(study_uid, files) -> job id``: sends the job (raises when it could not).
Submit = Callable[[str, list[Path]], str]


class StudyTimer:
    """Which studies received an instance when; hands out the ones quiet for ``stable_s``."""

    def __init__(self, stable_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stable_s = stable_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def touch(self, study_uid: str) -> None:
        with self._lock:
            self._last[study_uid] = self._clock()

    def due(self) -> list[str]:
        """Studies quiet for ``stable_s``; they leave the timer (``touch`` brings one back)."""
        now = self._clock()
        with self._lock:
            ready = [s for s, t in self._last.items() if now - t >= self.stable_s]
            for study in ready:
                del self._last[study]
        return ready

    def waiting(self) -> int:
        with self._lock:
            return len(self._last)


class DicomNode:
    """The SCP, its spool and its study timer. ``start`` returns once it listens."""

    def __init__(self, settings: NodeSettings, submit: Submit, model_key: str) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool)
        self.timer = StudyTimer(settings.stable_s)
        self.submit = submit
        self.model_key = model_key
        self._server: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts: dict[int, int] = {}
        self._counts_lock = threading.Lock()
        self.stored = 0
        self.ignored = 0

    # --- association and C-STORE handlers (pynetdicom threads) ---

    def _allowed(self, ae_title: str, address: str) -> bool:
        return not self.settings.allowed or any(e.matches(ae_title, address) for e in self.settings.allowed)

    def _on_requested(self, event: Any) -> None:
        requestor = event.assoc.requestor  # its ae_title is set only after negotiation: read the request
        ae_title, address = str(requestor.primitive.calling_ae_title).strip(), str(requestor.address)
        if not self._allowed(ae_title, address):
            log.warning("association refused: calling AE %r from %s is not in CXR_DICOM_ALLOWED_AES", ae_title, address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
            event.assoc.kill()  # as pynetdicom's own rejections: lets the DUL send the A-ASSOCIATE-RJ first

    def _on_conn_open(self, event: Any) -> None:
        set_nodelay(event.assoc)

    def _on_accepted(self, event: Any) -> None:
        with self._counts_lock:
            self._counts[id(event.assoc)] = 0

    def _on_ended(self, event: Any) -> None:
        with self._counts_lock:
            count = self._counts.pop(id(event.assoc), None)
        if count is None:
            return
        requestor = event.assoc.requestor
        how = "released" if event.event.name == "EVT_RELEASED" else "aborted"
        log.info(
            "association from %s@%s %s: %d instance(s) stored",
            str(requestor.ae_title).strip(),
            requestor.address,
            how,
            count,
        )

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Any) -> int:
        try:
            ds = event.dataset
            study_uid, sop_uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
            own = str(ds.get("Manufacturer", "")) == OWN_MANUFACTURER
            data = b"" if own else event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 (a peer's dataset may fail to parse in many ways)
            log.warning("C-STORE refused: the dataset could not be read (%s)", type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        if own:  # our own SC/SR/PDF, sent back with the study: success, but never analysed again
            with self._counts_lock:
                self.ignored += 1
            return STATUS_SUCCESS
        try:
            new = self.spool.store(study_uid, sop_uid, data)
        except ValueError:
            log.warning("C-STORE refused: StudyInstanceUID or SOPInstanceUID missing or malformed")
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("C-STORE failed: could not write the spool (%s)", exc.strerror or type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        self.timer.touch(study_uid)
        with self._counts_lock:
            self._counts[id(event.assoc)] = self._counts.get(id(event.assoc), 0) + 1
            self.stored += int(new)
        return STATUS_SUCCESS

    # --- life cycle ---

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.settings.output.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.settings.ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0  # unlimited: fewer, larger P-DATA for big radiographs
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        for study in self.spool.studies():  # restart: what was received but never submitted
            if self.spool.pending(study, self.model_key):
                self.timer.touch(study)
        self._server = ae.start_server((self.settings.host, self.settings.port), block=False, evt_handlers=handlers)
        self._thread = threading.Thread(target=self._submit_loop, name="dicom-node-submit", daemon=True)
        self._thread.start()
        log.info(
            "DICOM node %s listening on %s:%d (stable after %g s, spool %s)",
            self.settings.ae_title,
            self.settings.host,
            self.settings.port,
            self.settings.stable_s,
            self.settings.spool,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _submit_loop(self) -> None:
        interval = min(0.25, max(self.settings.stable_s / 4, 0.05))
        while not self._stop.wait(interval):
            self.submit_due()

    def submit_due(self) -> list[str]:
        """Submit every quiet study's pending instances; return the job ids sent."""
        jobs = []
        for study in self.timer.due():
            files = self.spool.pending(study, self.model_key)
            if not files:
                continue
            try:
                job_id = self.submit(study, files)
            except Exception as exc:  # noqa: BLE001 (the broker's errors are many; the files stay spooled)
                log.error("study %s: submitting %d instance(s) failed (%s); retried later", study, len(files), exc)
                self.timer.touch(study)
                continue
            self.spool.mark_submitted(study, self.model_key, files)
            log.info("study %s: %d instance(s) submitted as job %s", study, len(files), job_id)
            jobs.append(job_id)
        return jobs


def celery_submitter(redis_url: str | None, output: Path) -> Submit:
    """``submit`` through the API's own path: a job record, then the chord (``workers.canvas``)."""
    from engine.jobstore import JobStore
    from workers.app import create_celery_app
    from workers.canvas import send_bulk_job

    url = redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    store = JobStore.from_url(url, retries=3)
    celery = create_celery_app(url)

    def submit(study_uid: str, files: list[Path]) -> str:
        job_id = uuid.uuid4().hex
        paths = [str(p) for p in files]
        store.create(job_id, paths=paths, input_path=str(files[0].parent), output_path=str(output), layout="instance")
        try:
            send_bulk_job(celery, job_id, paths, str(output), "instance", dicom_outputs=True)
        except Exception:
            store.fail(job_id, "the job's tasks could not be sent to the broker; nothing was processed")
            raise
        return job_id

    return submit


def model_key() -> str:
    """The ledger's model identity: the first 16 hex digits of the weights' SHA-256."""
    from inference.bundle import read_bundle

    return read_bundle(verify=False).weights_sha256[:16]


def serve(settings: NodeSettings, redis_url: str | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (``cxr dicom-node``)."""
    import signal

    node = DicomNode(settings, celery_submitter(redis_url, settings.output), model_key())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    print(f"DICOM node {settings.ae_title} on port {node.port}", flush=True)
    stop.wait()
    node.stop()
    return 0


def set_nodelay(assoc: Any) -> None:
    """TCP_NODELAY on an association's socket. A C-STORE is a small command PDU then the
    data set: with Nagle's algorithm on the sender against the receiver's delayed ACK each
    instance waits ~40 ms (pynetdicom's SCU, which leaves Nagle on, sends 200 64-pixel
    files to the node at 18 images/s; with TCP_NODELAY at ~150/s). DCMTK and Orthanc set
    it; the node sets it on its side, and ``workers.dicom_send`` on the results it sends."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
