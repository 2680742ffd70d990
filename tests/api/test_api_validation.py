"""Every documented 400/415/500 answer that the API gives before any task is sent,
with the contract's exact message; the data-roots rule; the API without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.service import ROOT, SECRET


@pytest.fixture(scope="module")
def files(data_root: Path, small_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = data_root / "validation"
    (base / "in").mkdir(parents=True, exist_ok=True)
    (base / "empty").mkdir(exist_ok=True)
    image = base / "in" / "one.dcm"
    image.write_bytes(next(iter(sorted(small_phantoms.glob("*.dcm")))).read_bytes())
    (base / "notes.txt").write_text("not an image")
    (base / "a-file").write_text("a regular file where a folder is expected")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.dcm").write_bytes(image.read_bytes())
    (base / "link-out").symlink_to(outside, target_is_directory=True)
    return {"base": base, "image": image, "outside": outside}


def _post(client: Any, auth: dict[str, str], path: str, body: Any) -> tuple[int, str]:
    response = client.post(path, json=body, headers=auth)
    payload = response.get_json()
    assert set(payload) == {"Result", "Data", "Message"}
    assert payload["Result"] == "Failure"
    return response.status_code, payload["Message"]


def test_single_inference_messages(client: Any, auth: dict[str, str], files: dict[str, Path]) -> None:
    img, base, out = str(files["image"]), files["base"], str(files["base"] / "out")
    cases = [
        ({"output_folder_path": out}, 400, "input_image_path is required in the request"),
        ({"input_image_path": img}, 400, "output_folder_path is required in the request when save_to_disk is True"),
        (
            {"input_image_path": img, "save_to_disk": "yes", "output_folder_path": out},
            400,
            "Invalid value for save_to_disk, should be a boolean: 'yes'",
        ),
        ({"input_image_path": img, "save_to_disk": 1}, 400, "Invalid value for save_to_disk, should be a boolean: 1"),
        (
            {"input_image_path": img, "output_folder_path": out, "dicom_outputs": "yes"},
            400,
            "Invalid value for dicom_outputs, should be a boolean: 'yes'",
        ),
        (
            {"input_image_path": "relative/one.dcm", "output_folder_path": out},
            400,
            "Invalid path input_image_path: 'relative/one.dcm'",
        ),
        ({"input_image_path": "", "output_folder_path": out}, 400, "Invalid path input_image_path: ''"),
        (
            {"input_image_path": img + "\x00", "output_folder_path": out},
            400,
            f"Invalid path input_image_path: {img + chr(0)!r}",
        ),
        ({"input_image_path": 42, "output_folder_path": out}, 400, "Invalid path input_image_path: 42"),
        ({"input_image_path": img, "output_folder_path": ["x"]}, 400, "Invalid path output_folder_path: ['x']"),
        (
            {"input_image_path": str(base / "in" / "missing.dcm"), "output_folder_path": out},
            400,
            f"Input image path does not exist: {base / 'in' / 'missing.dcm'}",
        ),
        (
            {"input_image_path": str(base / "notes.txt"), "output_folder_path": out},
            400,
            f"Requested image is not a DICOM file: {base / 'notes.txt'}",
        ),
        (
            {"input_image_path": img, "output_folder_path": out, "patient_id": ""},
            400,
            "Invalid patient_id: '' in request body",
        ),
        (
            {"input_image_path": img, "output_folder_path": out, "patient_id": 7},
            400,
            "Invalid patient_id: 7 in request body",
        ),
        (
            {"input_image_path": img, "output_folder_path": out, "patient_id": "a\nb"},
            400,
            "Invalid patient_id: 'a\\nb' in request body",
        ),
        (
            {"input_image_path": img, "output_folder_path": out, "patient_id": "x" * 65},
            400,
            f"Invalid patient_id: {'x' * 65!r} in request body",
        ),
        (
            {"input_image_path": "/etc/passwd.dcm", "output_folder_path": out},
            400,
            "Path is outside the allowed data roots: /etc/passwd.dcm",
        ),
        (
            {"input_image_path": str(base / "link-out" / "secret.dcm"), "output_folder_path": out},
            400,
            f"Path is outside the allowed data roots: {base / 'link-out' / 'secret.dcm'}",
        ),
        (
            {"input_image_path": img, "output_folder_path": str(base / "link-out" / "o")},
            400,
            f"Path is outside the allowed data roots: {base / 'link-out' / 'o'}",
        ),
        (
            {"input_image_path": img, "output_folder_path": str(base / "a-file" / "o")},
            500,
            f"Unable to create output folder: {base / 'a-file' / 'o'}",
        ),
    ]
    for body, status, message in cases:
        assert _post(client, auth, "/single_inference", body) == (status, message), body


def test_bulk_inference_messages(client: Any, auth: dict[str, str], files: dict[str, Path]) -> None:
    base, out = files["base"], str(files["base"] / "bulk-out")
    inp = str(base / "in")
    cases = [
        ({"output_folder_path": out}, 400, "input_folder_path is required in the request"),
        ({"input_folder_path": inp}, 400, "output_folder_path is required in the request"),
        ({"input_folder_path": "in", "output_folder_path": out}, 400, "Invalid path input_folder_path: 'in'"),
        ({"input_folder_path": inp, "output_folder_path": "./o"}, 400, "Invalid path output_folder_path: './o'"),
        (
            {"input_folder_path": str(base / "nope"), "output_folder_path": out},
            400,
            f"Input folder path does not exist: {base / 'nope'}",
        ),
        (
            {"input_folder_path": str(base / "empty"), "output_folder_path": out},
            400,
            "No Dicom images found in the provided path",
        ),
        ({"input_folder_path": "/", "output_folder_path": out}, 400, "Path is outside the allowed data roots: /"),
        (
            {"input_folder_path": str(base / "link-out"), "output_folder_path": out},
            400,
            f"Path is outside the allowed data roots: {base / 'link-out'}",
        ),
        (
            {"input_folder_path": inp, "output_folder_path": out, "wait": "no"},
            400,
            "Invalid value for wait, should be a boolean: 'no'",
        ),
        (
            {"input_folder_path": inp, "output_folder_path": out, "layout": "flat"},
            400,
            'Invalid value for layout, should be "patient" or "instance": \'flat\'',
        ),
        (
            {"input_folder_path": inp, "output_folder_path": out, "dicom_outputs": 1},
            400,
            "Invalid value for dicom_outputs, should be a boolean: 1",
        ),
        (
            {"input_folder_path": inp, "output_folder_path": str(base / "a-file" / "o")},
            500,
            f"Unable to create output folder: {base / 'a-file' / 'o'}",
        ),
    ]
    for body, status, message in cases:
        assert _post(client, auth, "/bulk_inference", body) == (status, message), body


@pytest.mark.parametrize("path", ["/single_inference", "/bulk_inference"])
@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'"a string"', b"", b"[" * 100000])
def test_bodies_that_are_not_json_objects_get_415(client: Any, auth: dict[str, str], path: str, data: bytes) -> None:
    response = client.post(path, data=data, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 415
    assert response.get_json()["Message"] == "Request body must be a JSON object"


def test_huge_body_is_413(client: Any, auth: dict[str, str]) -> None:
    response = client.post(
        "/bulk_inference", data=b"{" + b" " * (2 << 20) + b"}", headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.get_json() == {"Result": "Failure", "Data": None, "Message": "Request body too large"}


def test_unknown_job_is_404(client: Any, auth: dict[str, str]) -> None:
    response = client.get("/jobs/0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", headers=auth)
    assert response.status_code == 404
    assert response.get_json()["Message"] == "Job not found: 0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"


def test_unknown_route_and_method_use_the_envelope(client: Any, auth: dict[str, str]) -> None:
    assert client.get("/nope", headers=auth).get_json()["Message"] == "Not found"
    response = client.get("/bulk_inference", headers=auth)
    assert response.status_code == 405
    assert response.get_json()["Message"] == "Method not allowed"


def test_api_process_never_imports_tensorflow(data_root: Path) -> None:
    script = (
        "import sys\n"
        "from api import create_app\n"
        f"app = create_app({{'CXR_JWT_SECRET': {SECRET!r}, 'CXR_DATA_ROOTS': {str(data_root)!r}}})\n"
        "c = app.test_client()\n"
        "assert c.get('/ping').status_code == 200\n"
        "assert c.post('/bulk_inference', json={}).status_code == 401\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'cv2', 'fpdf') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("endpoint", "field", "other"),
    [
        ("/single_inference", "input_image_path", {"save_to_disk": False}),
        ("/single_inference", "output_folder_path", {"input_image_path": "IMG"}),
        ("/bulk_inference", "input_folder_path", {"output_folder_path": "OUT"}),
        ("/bulk_inference", "output_folder_path", {"input_folder_path": "IN"}),
    ],
)
def test_path_fields_longer_than_4096_bytes_are_refused_before_resolving(
    client: Any, auth: dict[str, str], files: dict[str, Path], endpoint: str, field: str, other: dict[str, Any]
) -> None:
    """Issue 15, item 6: a 1 MB path of 500,000 components cost the API 30 s of CPU in
    ``realpath``. The limit is in bytes of UTF-8: 2,049 two-byte characters are over it."""
    base = str(files["base"])
    fill = {"IMG": str(files["image"]), "OUT": base + "/out", "IN": base + "/in"}
    body = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in other.items()}
    expected = f"Invalid path {field}: longer than 4096 bytes"
    huge = base + "/a" * 499_000  # 1 MB of components
    for value in (huge, base + "/" + "é" * 2049, base + "/" + "b" * (4096 - len(base))):
        started = time.monotonic()
        status, message = _post(client, auth, endpoint, {**body, field: value})
        assert (status, message) == (400, expected), (len(value.encode()), message[:200])
        assert time.monotonic() - started < 2.0
    # 4096 bytes exactly is a path like any other (here one that does not exist, or a new folder).
    at_limit = base + "/" + "c" * (4095 - len(base))
    assert len(at_limit.encode()) == 4096
    response = client.post(endpoint, json={**body, field: at_limit}, headers=auth)
    assert "longer than 4096 bytes" not in response.get_json()["Message"]
