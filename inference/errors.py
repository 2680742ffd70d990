"""Domain exceptions: the one vocabulary for "this file cannot be processed".

Each exception carries a machine-readable ``reason`` (the skip reason code of the
API contract) and a human-readable ``detail`` that names the DICOM tag or value at
fault. The API turns them into envelope messages; workers and the CLI turn them into
skip records. Nothing else in the code base invents reason codes.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base class. ``reason`` is stable (clients match on it); ``detail`` is prose."""

    reason = "inference_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def as_skip(self, path: str) -> dict[str, str]:
        return {"path": path, "reason": self.reason, "detail": self.detail}


class UnreadableDicom(CxrError):
    """Not DICOM at all, empty, or truncated before the pixel data."""

    reason = "unreadable_dicom"


class MissingPatientId(CxrError):
    """(0010,0020) PatientID absent or blank, and no override was given."""

    reason = "missing_patient_id"


class UnsupportedModality(CxrError):
    """(0008,0060) Modality is not one the engine accepts (see ``ReadOptions``)."""

    reason = "unsupported_modality"


class UnsupportedImage(CxrError):
    """No pixel data, a DICOMDIR, absurd dimensions, or a pixel layout we refuse."""

    reason = "unsupported_image"


class DecodeError(CxrError):
    """The pixel data is present but could not be decoded by any available plugin."""

    reason = "decode_error"


class OutsideDataRoots(CxrError):
    """A symbolic link in an input folder resolves outside ``CXR_DATA_ROOTS``; it is not
    followed (decided by the API's discovery, before any task is sent). Also what a
    worker answers for a path it received that lies outside its own ``CXR_DATA_ROOTS``
    or passes through a symbolic link (one swapped in after the API checked the path)."""

    reason = "outside_data_roots"


class OutputError(CxrError):
    """The output cannot go where it was asked to: the name is taken by something the
    engine did not make (a file, a link, a client's own folder), or a folder the engine
    needs (``.tmp``, ``.locks``, ``.jobs``) is a link. Nothing is replaced or followed;
    the detail names the conflict (relative to the output folder, never an absolute path).
    Disk-full and permission errors are ``OSError`` and end as the same reason."""

    reason = "output_error"


class InferenceError(CxrError):
    """The model failed on an image that decoded fine."""

    reason = "inference_error"


class BundleError(Exception):
    """A model bundle is missing, malformed, or its weights fail the SHA-256 check.

    Not a per-file skip: a worker with a bad bundle must refuse to start.
    """


_interrupts: tuple[type[BaseException], ...] = ()


def register_interrupt(exc_class: type[BaseException]) -> None:
    """Declare an exception that must cross the core's broad ``except Exception`` handlers.

    Decoders and the DICOM parser fail in many ways, so a few handlers turn *any*
    exception into a refusal. An interruption is not a refusal: the worker registers
    Celery's ``SoftTimeLimitExceeded`` here so that a file over its time limit is
    reported as ``timeout``, not as ``decode_error``. The core never imports Celery.
    """
    global _interrupts
    if exc_class not in _interrupts:
        _interrupts = (*_interrupts, exc_class)


def reraise_if_interrupt(exc: BaseException) -> None:
    if isinstance(exc, _interrupts):
        raise exc


SKIP_REASONS = (
    "unreadable_dicom",
    "missing_patient_id",
    "unsupported_modality",
    "unsupported_image",
    "decode_error",
    "inference_error",
    "timeout",
    "outside_data_roots",  # a link in the input folder leads outside CXR_DATA_ROOTS; or a path a worker got does
    "output_error",  # the output could not be written (disk full, read-only, a name the engine did not make)
    "worker_lost",  # the worker process died every time it processed the file (CXR_MAX_DELIVERIES)
    "lost",  # the broker lost the file's task message; the file was not processed
)

#: Job-level reasons (not file skips): the job's summary names them in a field of their own.
JOB_REASONS = (
    "dicom_send_error",  # the job's DICOM outputs could not be sent to CXR_DICOM_DESTINATION (workers.dicom_send)
)
