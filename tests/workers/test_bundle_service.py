"""The service path with a hospital-style bundle chosen by ``CXR_MODEL_DIR``: a real
worker serving a 3-channel, 2-label softmax model (NORMAL / PNEUMONIA, Keras "tf"
scaling, nested backbone) runs a bulk job and a single inference; and a worker given a
bundle that fails the full check refuses to start with one line naming the reason.

Own Redis database (``bundles`` in ``REDIS_DBS``), own worker, own API app.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.service import SECRET, WorkerProcess, copy_inputs, redis_db_url, running_worker, worker_env

pytestmark = pytest.mark.service  # starts its own worker processes

BUNDLES_DB_URL = redis_db_url("bundles")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench import app_models as mb

    return mb.write_bundle(tmp_path_factory.mktemp("bundle") / "tiny", mb.build_tiny(), mb.tiny_manifest())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[tuple[Any, Path]]:
    from api import create_app

    root = tmp_path_factory.mktemp("bundle-service")
    client = redis.Redis.from_url(BUNDLES_DB_URL)
    client.flushdb()
    app = create_app(
        {
            "REDIS_URL": BUNDLES_DB_URL,
            "CXR_JWT_SECRET": SECRET,
            "CXR_DATA_ROOTS": str(root),
            "CXR_BULK_WAIT_S": 120.0,
            "CXR_SINGLE_WAIT_S": 60.0,
            "CXR_POLL_INTERVAL_S": 0.1,
        }
    )
    env = worker_env(BUNDLES_DB_URL, CXR_MODEL_DIR=str(tiny_bundle), CXR_OPERATING_POINT="high_sensitivity")
    try:
        with running_worker("bundles", app, root / "worker.log", env):
            yield app, root
    finally:
        client.flushdb()


def test_bulk_and_single_inference_with_a_two_label_rgb_bundle(service: tuple[Any, Path], small_phantoms: Path) -> None:
    from api.auth import issue_token

    app, root = service
    auth = {"Authorization": issue_token(app, "bundles")}
    inp = copy_inputs(small_phantoms, root / "in", ["phantom_777_00000.dcm", "phantom_777_00001.dcm"])
    response = app.test_client().post(
        "/bulk_inference", headers=auth, json={"input_folder_path": str(inp), "output_folder_path": str(root / "out")}
    )
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()["Data"]
    assert (summary["status"], summary["total"], summary["processed"]) == ("completed", 2, 2), summary
    for folder in summary["outputs"].values():
        [doc_path] = Path(folder).glob("*_predictions.json")
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
        assert doc["model"]["name"] == "tiny-pneumonia" and doc["model"]["operating_point"] == "high_sensitivity"
        assert [o["label"] for o in doc["model_outputs"]] == ["NORMAL", "PNEUMONIA"]
        normal, pneumonia = doc["model_outputs"]
        assert normal["relation"] == "normal" and pneumonia["threshold"] == 0.2  # the operating point's
        assert abs(normal["probability"] + pneumonia["probability"] - 1.0) < 2e-4  # softmax applied
        assessed = [f["name"] for f in doc["findings"] if f["assessed"]]
        assert assessed == ["Consolidation"] and len(doc["findings"]) == 11
        consolidation = next(f for f in doc["findings"] if f["name"] == "Consolidation")
        assert consolidation["confidence"] == pneumonia["probability"]
        assert doc["heatmap"]["finding"] == "PNEUMONIA" and doc["heatmap"]["layer"] == "backbone/c2"

    response = app.test_client().post(
        "/single_inference",
        headers=auth,
        json={"input_image_path": str(inp / "phantom_777_00001.dcm"), "save_to_disk": False},
    )
    assert response.status_code == 200, response.get_json()
    data = response.get_json()["Data"]
    assert [f["name"] for f in data["findings"] if f["assessed"]] == ["Consolidation"]
    assert all(f["confidence"] is None for f in data["findings"] if not f["assessed"])
    assert base64.b64decode(data["report"]).startswith(b"%PDF-")


def test_worker_refuses_to_start_on_a_bundle_that_fails_the_check(tiny_bundle: Path, tmp_path: Path) -> None:
    """The layer path is only wrong against the model itself (the manifest is valid):
    the full check in the worker's start-up catches it. With the worker start-up of
    before (a BundleError raised in the ``worker_init`` handler, which Celery only logs)
    this test failed: the worker ran on."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["gradcam"]["layer"] = "backbone/nope"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    env = worker_env(BUNDLES_DB_URL, CXR_MODEL_DIR=str(bad), CXR_BUNDLE_CHECK_CACHE=str(tmp_path / "checks"))
    worker = WorkerProcess("bundles-bad", tmp_path / "bad.log", env)
    try:
        code = worker.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker started on a bad bundle: {(tmp_path / 'bad.log').read_text()[-2000:]}")
    finally:
        worker.stop()
    log = (tmp_path / "bad.log").read_text()
    assert code != 0
    expected = (
        f"worker refuses to start: model bundle {bad}: gradcam layer 'backbone/nope' not found: "
        "no layer 'nope' in backbone"
    )
    assert expected in log, log[-2000:]
