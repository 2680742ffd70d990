"""Building and sending the bulk-job chord (imports no task code, no TensorFlow).

The API calls ``send_bulk_job``: one ``cxr.infer_file`` signature per file on the
``inference`` queue, and ``cxr.finalize_job`` as the callback on the default queue, with
``cxr.chord_failed`` as the callback's error hook. The task ids are chosen here, before
anything is sent: file ``i``'s is ``<job_id>-<i>`` and the callback's
``<job_id>-finalize``, so the callback can look up how any file's task ended without a
saved ``GroupResult`` (saving one would route the chord through Celery's slower join
path). The group id is Celery's own (a chord unwraps the header group it is given). Only ids, paths and the layout travel
through the broker.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery, Signature, chord

from workers.app import DEFAULT_QUEUE, INFERENCE_QUEUE, SINGLE_QUEUE


def header_task_id(job_id: str, index: int) -> str:
    return f"{job_id}-{index}"


def finalize_task_id(job_id: str) -> str:
    return f"{job_id}-finalize"


def job_id_of_task(task_id: str) -> str | None:
    """The inverse of the two above: ``<job_id>-<i>`` and ``<job_id>-finalize`` -> ``<job_id>``
    (job ids are uuid4 hex, without dashes)."""
    job_id, sep, _ = task_id.rpartition("-")
    return job_id if sep and job_id and "-" not in job_id else None


def _finalize_signature(app: Celery, job_id: str) -> Signature:
    return app.signature(
        "cxr.finalize_job", kwargs={"job_id": job_id}, queue=DEFAULT_QUEUE, task_id=finalize_task_id(job_id)
    )


def _options(dicom_outputs: bool) -> dict[str, bool]:
    """Optional task kwargs, sent only when set: a worker of the previous release still
    takes the messages of a job that does not use them (rolling upgrades)."""
    return {"dicom_outputs": True} if dicom_outputs else {}


def send_bulk_job(
    app: Celery, job_id: str, paths: Sequence[str], output: str, layout: str, *, dicom_outputs: bool = False
) -> None:
    header = [
        app.signature(
            "cxr.infer_file",
            kwargs={
                "job_id": job_id,
                "index": i,
                "path": p,
                "output": output,
                "layout": layout,
                **_options(dicom_outputs),
            },
            queue=INFERENCE_QUEUE,
            task_id=header_task_id(job_id, i),
        )
        for i, p in enumerate(paths)
    ]
    body = _finalize_signature(app, job_id)
    body.link_error(app.signature("cxr.chord_failed", kwargs={"job_id": job_id}))
    chord(header, app=app)(body, task_id=finalize_task_id(job_id))


def send_finalize(app: Celery, job_id: str) -> None:
    """The callback alone, for a job whose every file was refused before any task."""
    _finalize_signature(app, job_id).apply_async()


def send_single(
    app: Celery,
    *,
    request_id: str,
    path: str,
    output: str | None,
    patient_id: str | None,
    expires_s: float,
    dicom_outputs: bool = False,
) -> str:
    """Queue one single-inference task on its own queue, which workers serve before bulk
    files (``celeryconfig``); it is discarded if no worker takes it in time."""
    sig = app.signature(
        "cxr.infer_single",
        kwargs={
            "path": path,
            "output": output,
            "patient_id": patient_id,
            "request_id": request_id,
            **_options(dicom_outputs),
        },
        queue=SINGLE_QUEUE,
        task_id=request_id,
    )
    sig.apply_async(expires=expires_s)
    return request_id
