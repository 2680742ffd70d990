"""Issue 15 items 1, 2 and 5 through the service (real API, real worker, real Redis).

* Item 1: a ``patient_id`` naming a client's own folder or an input DICOM is refused
  (``output_error`` naming the conflict); nothing the engine did not make is replaced.
* Item 2: links swapped in after the 202 (the output folder, an input, ``.tmp``,
  ``.jobs``) are never followed, and a task sent straight to the queue with a path
  outside the worker's data roots is refused. The worker is paused (its consumers
  cancelled) between the 202 and the swap, so each step is hit deterministically.
* Item 5: two jobs writing one patient folder: the greater rank stays on disk, and the
  later job's summary says its file was superseded by the earlier job's.

Uses the shared service fixtures (``app``, ``client``, ``worker``; the worker's
``CXR_DATA_ROOTS`` is the API's data root).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.service import WorkerProcess, wait_for_job
from workers.canvas import send_single
from workers.single import take_outcome

QUEUES = ("inference", "celery")


@contextmanager
def paused(app: Any, worker: WorkerProcess) -> Iterator[None]:
    """The worker consumes nothing inside the block (what the API sends waits in Redis)."""
    control = app.extensions["cxr_celery"].control
    for queue in QUEUES:
        assert control.cancel_consumer(queue, destination=[worker.name], reply=True, timeout=10)
    try:
        yield
    finally:
        for queue in QUEUES:
            control.add_consumer(queue, destination=[worker.name], reply=True, timeout=10)


def write_dicom(src: Path, dest: Path, patient_id: str, acquisition: str) -> Path:
    ds = pydicom.dcmread(src)
    ds.PatientID = patient_id
    ds.AcquisitionDateTime = acquisition
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def post(client: Any, auth: dict[str, str], route: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(route, json=body, headers=auth)
    return response.status_code, response.get_json()


def bulk_after_swap(
    client: Any, auth: dict[str, str], app: Any, worker: WorkerProcess, inp: Path, out: Path, swap: Any
) -> dict[str, Any]:
    """A bulk job accepted (202) while the worker is paused; ``swap()`` runs before it resumes."""
    with paused(app, worker):
        status, body = post(
            client,
            auth,
            "/bulk_inference",
            {"input_folder_path": str(inp), "output_folder_path": str(out), "wait": False},
        )
        assert status == 202, body
        swap()
    return wait_for_job(client, auth, body["Data"]["status_url"])["Data"]


@pytest.fixture()
def phantoms(small_phantoms: Path) -> list[Path]:
    return sorted(small_phantoms.glob("*.dcm"))


def test_links_swapped_in_at_each_step_are_never_followed(
    client: Any,
    auth: dict[str, str],
    app: Any,
    worker: WorkerProcess,
    data_root: Path,
    phantoms: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    outside = tmp_path_factory.mktemp("outside-swaps")
    base = data_root / f"swaps-{uuid.uuid4().hex[:8]}"

    # 1. The output folder becomes a link to a folder outside the roots.
    (base / "in1").mkdir(parents=True)
    shutil.copy(phantoms[0], base / "in1" / "a.dcm")
    (outside / "o1").mkdir()

    def swap_output() -> None:
        (base / "out1").rmdir()
        (base / "out1").symlink_to(outside / "o1")

    data = bulk_after_swap(client, auth, app, worker, base / "in1", base / "out1", swap_output)
    assert [(s["reason"], s["detail"]) for s in data["skipped"]] == [
        (
            "outside_data_roots",
            "the output folder passes through a symbolic link (changed after the request was checked): not followed",
        )
    ]
    assert data["summary_file"] is None and list((outside / "o1").iterdir()) == []

    # 2. An input becomes a link to a DICOM outside the roots: not read, not published.
    secret = write_dicom(phantoms[1], outside / "secret.dcm", "SECRET-PATIENT", "20250101000000")
    (base / "in2").mkdir()
    shutil.copy(phantoms[0], base / "in2" / "a.dcm")
    shutil.copy(phantoms[2], base / "in2" / "b.dcm")

    def swap_input() -> None:
        (base / "in2" / "a.dcm").unlink()
        (base / "in2" / "a.dcm").symlink_to(secret)

    data = bulk_after_swap(client, auth, app, worker, base / "in2", base / "out2", swap_input)
    assert {s["path"]: s["reason"] for s in data["skipped"]} == {str(base / "in2" / "a.dcm"): "outside_data_roots"}
    assert data["processed"] == 1 and not (base / "out2" / "SECRET-PATIENT").exists()
    assert "SECRET-PATIENT" not in json.dumps(data)

    # 3. `.tmp` and `.jobs` become links: no staging, cleanup or summary goes through them.
    (base / "in3").mkdir()
    shutil.copy(phantoms[3], base / "in3" / "c.dcm")
    (outside / "tmp" / "old-entry").mkdir(parents=True)
    (outside / "tmp" / "old-entry" / "keep").write_text("precious")
    (outside / "jobs").mkdir()
    old = time.time() - 7200
    os.utime(outside / "tmp" / "old-entry", (old, old))

    def swap_dot_folders() -> None:
        (base / "out3" / ".tmp").symlink_to(outside / "tmp")
        (base / "out3" / ".jobs").symlink_to(outside / "jobs")

    data = bulk_after_swap(client, auth, app, worker, base / "in3", base / "out3", swap_dot_folders)
    assert [(s["reason"], s["detail"]) for s in data["skipped"]] == [
        ("output_error", "'.tmp' in the output folder is a symbolic link: not followed")
    ]
    assert data["summary_file"] is None
    assert (outside / "tmp" / "old-entry" / "keep").read_text() == "precious"
    assert list((outside / "jobs").iterdir()) == []

    # 4. A task sent straight to the queue (no API) naming paths outside the roots.
    celery = app.extensions["cxr_celery"]
    (outside / "o4").mkdir()
    for path, output in ((base / "in3" / "c.dcm", outside / "o4"), (secret, base / "out4")):
        task_id = f"single-{uuid.uuid4().hex}"
        send_single(celery, request_id=task_id, path=str(path), output=str(output), patient_id=None, expires_s=60)
        celery.AsyncResult(task_id).get(timeout=60)  # the Celery result holds status and ids only
        result = take_outcome(app.extensions["cxr_jobs"].client, task_id)
        assert result is not None
        assert result["status"] == "skipped" and result["reason"] == "outside_data_roots", result
        assert "outside this worker's data roots" in result["detail"]
    assert list((outside / "o4").iterdir()) == [] and not (base / "out4").exists()


def test_outputs_replace_only_the_engines_own_folders(
    client: Any, auth: dict[str, str], app: Any, worker: WorkerProcess, data_root: Path, phantoms: list[Path]
) -> None:
    from api.auth import issue_token

    second = {"Authorization": issue_token(app, "second-client")}
    own = data_root / f"own-{uuid.uuid4().hex[:8]}"
    image = own / "phantom_1000_00003.dcm"
    own.mkdir()
    shutil.copy(phantoms[0], image)
    (own / "victim").mkdir()
    (own / "victim" / "notes.txt").write_text("the client's own notes")
    shutil.copy(phantoms[1], own / "victim" / "study.dcm")
    before = {p: p.read_bytes() for p in own.rglob("*") if p.is_file()}

    # Item 1: the patient_id names a client's folder, then an input DICOM of the output folder.
    for patient_id, conflict in (
        ("victim", "'victim' in the output folder is a folder the engine did not make (no .cxr-engine marker)"),
        (image.name, f"'{image.name}' in the output folder is a file, not a folder made by the engine"),
    ):
        body = {"input_image_path": str(image), "output_folder_path": str(own), "patient_id": patient_id}
        status, answer = post(client, second, "/single_inference", body)
        assert (status, answer["Message"]) == (500, f"Unable to create output folder: {own}"), answer
        assert answer["Data"]["reason"] == "output_error" and answer["Data"]["detail"].startswith(conflict)
    assert {p: p.read_bytes() for p in own.rglob("*") if p.is_file() and ".locks" not in p.parts} == before


def test_rank_rule_and_summaries_hold_across_jobs(
    client: Any, auth: dict[str, str], app: Any, worker: WorkerProcess, data_root: Path, phantoms: list[Path]
) -> None:
    """Item 5: job A (first client) publishes the newer image of P15; job B (second
    client), later, an older one into the same folder. The newer stays; B's summary says so."""
    from api.auth import issue_token

    second = {"Authorization": issue_token(app, "second-client")}
    own = data_root / f"ranks-{uuid.uuid4().hex[:8]}"
    newer = write_dicom(phantoms[2], own / "a" / "newer.dcm", "P15", "20260301120000")
    older = write_dicom(phantoms[3], own / "b" / "older.dcm", "P15", "20250301120000")
    out = own / "out"
    status, job_a = post(
        client, auth, "/bulk_inference", {"input_folder_path": str(own / "a"), "output_folder_path": str(out)}
    )
    assert status == 200 and job_a["Data"]["superseded"] == [], job_a
    status, job_b = post(
        client, second, "/bulk_inference", {"input_folder_path": str(own / "b"), "output_folder_path": str(out)}
    )
    assert status == 200, job_b
    assert job_b["Data"]["processed"] == 1 and job_b["Data"]["superseded"] == [
        {"path": str(older), "folder": str(out / "P15"), "kept": str(newer), "kept_job_id": job_a["Data"]["job_id"]}
    ]
    on_disk = json.loads((out / "P15" / "P15_predictions.json").read_text())
    assert on_disk["source"]["path"] == str(newer) and on_disk["publication"]["job_id"] == job_a["Data"]["job_id"]
    summary_b = json.loads(Path(job_b["Data"]["summary_file"]).read_text())
    assert summary_b["superseded"] == job_b["Data"]["superseded"]

    # A single inference of the older image into that folder: answered, not published.
    body = {"input_image_path": str(older), "output_folder_path": str(out)}
    status, answer = post(client, second, "/single_inference", body)
    assert status == 200 and answer["Data"]["published"] is False, answer
    assert json.loads((out / "P15" / "P15_predictions.json").read_text())["source"]["path"] == str(newer)
