"""Hostile input through the service: the fuzz corpus as a real bulk job (real worker,
real Redis), symbolic links out of the data roots, and hostile request bodies (every
field x every wrong JSON type, unknown fields, deep JSON, huge and chunked bodies).

Uses the shared service fixtures (``app``, ``client``, ``worker``: database 12 of the
test Redis). Complements ``test_api_validation.py``, which holds one exact message per
documented failure; here every field meets every wrong type.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from inference.errors import SKIP_REASONS
from tests.inference.test_fuzz_corpus import (
    assert_no_temp_leftovers,
    assert_only_output_changed,
    tree_snapshot,
)
from tests.support.fuzz_corpus import PROCESSED, build_corpus
from tests.support.service import WorkerProcess

UNKNOWN_FIELDS = {
    "priority": "high",
    "callback_url": "http://example.invalid/",
    "__proto__": {"admin": True},
    "input_image_path2": 7,
    "Wait": False,
    "LAYOUT": None,
}


@pytest.fixture(scope="module")
def hostile(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = data_root / "hostile"
    outside = tmp_path_factory.mktemp("outside-roots")
    (outside / "secret.dcm").write_bytes(b"not for you")
    (outside / "dir").mkdir()
    (outside / "dir" / "s.dcm").write_bytes(b"not for you")
    (base / "only-refused").mkdir(parents=True)
    (base / "only-refused" / "out.dcm").symlink_to(outside / "secret.dcm")
    (base / "out-link").symlink_to(outside, target_is_directory=True)
    (base / "image").mkdir()
    (base / "image" / "x.dcm").write_bytes(b"x")
    return {"base": base, "outside": outside}


def _post(client: Any, auth: dict[str, str], path: str, body: Any, **kwargs: Any) -> tuple[int, str, Any]:
    if isinstance(body, bytes):
        response = client.post(path, data=body, headers={**auth, "Content-Type": "application/json"}, **kwargs)
    else:
        response = client.post(path, json=body, headers=auth, **kwargs)
    payload = response.get_json()
    assert set(payload) == {"Result", "Data", "Message"}
    return response.status_code, payload["Message"], payload["Data"]


# ------------------------------------------------------------------ the corpus as a job


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_corpus_as_a_bulk_job(
    client: Any,
    auth: dict[str, str],
    worker: WorkerProcess,
    data_root: Path,
    hostile: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Every corpus file and every trap (links out of the roots, a loop, a FIFO, a name
    that is not UTF-8) ends processed or skipped with a reason; the job completes; the
    whole temporary tree changes only inside the output folder."""
    job_dir = hostile["base"] / "corpus"
    inp, out = job_dir / "in", job_dir / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = build_corpus(inp)
    expected = {str(inp / e.name): e.expect for e in entries}
    traps = {
        "out-file.dcm": "outside_data_roots",
        "out-dir": "outside_data_roots",
        "pipe.dcm": "unreadable_dicom",
    }
    (inp / "traps").mkdir()
    (inp / "traps" / "out-file.dcm").symlink_to(hostile["outside"] / "secret.dcm")
    (inp / "traps" / "out-dir").symlink_to(hostile["outside"] / "dir", target_is_directory=True)
    (inp / "traps" / "loop").symlink_to(inp, target_is_directory=True)
    (inp / "traps" / "again.dcm").symlink_to(inp / "valid" / "plain.dcm")  # the same file: one input
    os.mkfifo(inp / "traps" / "pipe.dcm")  # would block a worker that opened it
    expected.update({str(inp / "traps" / name): reason for name, reason in traps.items()})
    with open(os.fsencode(str(inp / "traps")) + b"/latin1-\xe9.dcm", "wb") as handle:
        handle.write(b"x")
    expected[str(inp / "traps") + "/latin1-\\xe9.dcm"] = "unreadable_dicom"

    tmp_root = tmp_path_factory.getbasetemp()
    logs = {p.name for p in tmp_root.iterdir() if p.name.startswith("logs")}  # the worker's log grows
    before = {k: v for k, v in tree_snapshot(tmp_root).items() if k.split(os.sep)[0] not in logs}
    status, message, data = _post(
        client,
        auth,
        "/bulk_inference",
        {"input_folder_path": str(inp), "output_folder_path": str(out), **UNKNOWN_FIELDS},
    )
    after = {k: v for k, v in tree_snapshot(tmp_root).items() if k.split(os.sep)[0] not in logs}

    assert (status, message) == (200, "Bulk inference completed successfully."), data
    assert data["status"] == "completed"
    assert data["total"] == len(expected) and data["processed"] + len(data["skipped"]) == data["total"]
    outcomes = {path: PROCESSED for path in data["outputs"]}
    outcomes.update({s["path"]: s["reason"] for s in data["skipped"]})
    assert outcomes == expected
    assert all(s["reason"] in SKIP_REASONS and s["detail"] for s in data["skipped"])
    assert str(hostile["outside"]) not in json.dumps(data)  # where a link points is never shown
    folders = [Path(f) for f in data["outputs"].values()]
    assert all(f.parent == out.resolve() for f in folders)
    assert len(set(folders)) == len(folders)  # one image per patient here: no folder shared

    output = str(out.relative_to(tmp_root))
    assert_only_output_changed(before, after, output)
    assert_no_temp_leftovers(out)
    assert (out / ".jobs" / f"{data['job_id']}.json").is_file()


def test_a_job_whose_every_file_is_refused_still_finishes(
    client: Any, auth: dict[str, str], worker: WorkerProcess, hostile: dict[str, Path]
) -> None:
    folder = hostile["base"] / "only-refused"
    status, message, data = _post(
        client, auth, "/bulk_inference", {"input_folder_path": str(folder), "output_folder_path": str(folder / "o")}
    )
    assert (status, message) == (200, "Bulk inference completed successfully."), data
    assert (data["total"], data["processed"]) == (1, 0)
    assert data["skipped"] == [
        {
            "path": str(folder / "out.dcm"),
            "reason": "outside_data_roots",
            "detail": "symbolic link to a file outside the data roots (CXR_DATA_ROOTS): not followed",
        }
    ]


@pytest.mark.parametrize("endpoint", ["/bulk_inference", "/single_inference"])
def test_output_folder_cannot_be_or_pass_through_a_link_out_of_the_roots(
    client: Any, auth: dict[str, str], hostile: dict[str, Path], endpoint: str
) -> None:
    base = hostile["base"]
    source = {
        "/bulk_inference": {"input_folder_path": str(base / "image")},
        "/single_inference": {"input_image_path": str(base / "image" / "x.dcm")},
    }[endpoint]
    for output in (base / "out-link", base / "out-link" / "new", base / "out-link" / "dir" / "deeper"):
        status, message, _ = _post(client, auth, endpoint, {**source, "output_folder_path": str(output)})
        assert (status, message) == (400, f"Path is outside the allowed data roots: {output}")
    assert not (hostile["outside"] / "new").exists() and not (hostile["outside"] / "dir" / "deeper").exists()


# -------------------------------------------------------------- wrong types, every field

HUGE = "x" * 100_000
WRONG = {
    "int": 7,
    "float": 1.5,
    "bool": True,
    "null": None,
    "list": ["a", 1],
    "dict": {"a": 1},
    "empty": "",
    "huge": HUGE,
}
REQUIRED = {
    ("/single_inference", "input_image_path"): "input_image_path is required in the request",
    (
        "/single_inference",
        "output_folder_path",
    ): "output_folder_path is required in the request when save_to_disk is True",
    ("/bulk_inference", "input_folder_path"): "input_folder_path is required in the request",
    ("/bulk_inference", "output_folder_path"): "output_folder_path is required in the request",
}


def expected_message(endpoint: str, field: str, value: Any) -> str | None:
    """The documented 400 message for ``field`` = ``value``; None where the value is valid."""
    if field in ("save_to_disk", "wait"):
        return None if isinstance(value, bool) else f"Invalid value for {field}, should be a boolean: {value!r}"
    if field == "layout":
        return f'Invalid value for layout, should be "patient" or "instance": {value!r}'
    if field == "patient_id":
        return None if value is None else f"Invalid patient_id: {value!r} in request body"  # null: absent
    if value is None:
        return REQUIRED[(endpoint, field)]
    if isinstance(value, str) and len(value) > 4096:  # never echoed back (issue 15, item 6)
        return f"Invalid path {field}: longer than 4096 bytes"
    return f"Invalid path {field}: {value!r}"


FIELDS = [("/single_inference", f) for f in ("input_image_path", "save_to_disk", "output_folder_path", "patient_id")]
FIELDS += [("/bulk_inference", f) for f in ("input_folder_path", "output_folder_path", "wait", "layout")]


# Every (field, wrong value) pair; a value that is right for the field (a boolean for
# ``wait``, null for the optional ``patient_id``) is not a case.
CASES = [
    (endpoint, field, kind)
    for endpoint, field in FIELDS
    for kind in WRONG
    if expected_message(endpoint, field, WRONG[kind]) is not None
]


@pytest.mark.parametrize(("endpoint", "field", "kind"), CASES)
def test_every_field_refuses_every_wrong_type(
    client: Any, auth: dict[str, str], hostile: dict[str, Path], endpoint: str, field: str, kind: str
) -> None:
    value = WRONG[kind]
    message = expected_message(endpoint, field, value)
    base = hostile["base"]
    valid = {
        "/single_inference": {
            "input_image_path": str(base / "image" / "x.dcm"),
            "save_to_disk": True,
            "output_folder_path": str(base / "o"),
            "patient_id": "P-1",
        },
        "/bulk_inference": {
            "input_folder_path": str(base / "image"),
            "output_folder_path": str(base / "o"),
            "wait": True,
            "layout": "patient",
        },
    }[endpoint]
    assert _post(client, auth, endpoint, {**valid, field: value})[:2] == (400, message)


@pytest.mark.parametrize("endpoint", ["/single_inference", "/bulk_inference"])
def test_unknown_fields_are_ignored(client: Any, auth: dict[str, str], hostile: dict[str, Path], endpoint: str) -> None:
    """The rule: fields the contract does not name are ignored, whatever their type or
    name (``Wait`` is not ``wait``). The bulk job above carries them too and succeeds."""
    missing = str(hostile["base"] / "missing")
    body = {
        "/single_inference": {"input_image_path": missing + ".dcm", "output_folder_path": missing},
        "/bulk_inference": {"input_folder_path": missing, "output_folder_path": missing},
    }[endpoint]
    plain = _post(client, auth, endpoint, body)
    assert plain[0] == 400 and plain[1].endswith(" does not exist: " + body[next(iter(body))])
    assert _post(client, auth, endpoint, {**body, **UNKNOWN_FIELDS}) == plain
    deep_extra = {"extra": json.loads("[" * 500 + "]" * 500)}
    assert _post(client, auth, endpoint, {**body, **deep_extra}) == plain


# --------------------------------------------------------------- deep, huge, odd bodies

DEEP_BODIES = {
    "open-lists": b"[" * 100_000,
    "open-objects": b'{"a":' * 100_000,
    "closed-lists": b"[" * 200_000 + b"]" * 200_000,
    "deep-in-a-field": b'{"input_folder_path": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "invalid-utf8": b'{"input_folder_path": "\xff\xfe"}',
}


@pytest.mark.parametrize("label", list(DEEP_BODIES))
@pytest.mark.parametrize("endpoint", ["/single_inference", "/bulk_inference"])
def test_deep_or_broken_json_is_415_quickly_and_logs_no_error(
    client: Any, auth: dict[str, str], endpoint: str, label: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    start = time.perf_counter()
    status, message, _ = _post(client, auth, endpoint, DEEP_BODIES[label])
    assert (status, message) == (415, "Request body must be a JSON object")
    assert time.perf_counter() - start < 5.0  # generous: milliseconds when idle; a loop would take minutes
    assert "RecursionError" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_nesting_the_parser_accepts_is_a_400_for_the_field(
    client: Any, auth: dict[str, str], hostile: dict[str, Path]
) -> None:
    nested = json.loads("[" * 900 + "]" * 900)
    status, message, _ = _post(
        client, auth, "/bulk_inference", {"input_folder_path": nested, "output_folder_path": str(hostile["base"] / "o")}
    )
    assert (status, message) == (400, f"Invalid path input_folder_path: {nested!r}")


def test_paths_that_are_not_text_or_too_long(client: Any, auth: dict[str, str], hostile: dict[str, Path]) -> None:
    base = hostile["base"]
    surrogate = b'{"input_folder_path": "' + str(base).encode() + b'/\\udcff", "output_folder_path": "/o"}'
    status, message, _ = _post(client, auth, "/bulk_inference", surrogate)
    assert (status, message) == (400, f"Invalid path input_folder_path: {str(base) + '/' + chr(0xDCFF)!r}")
    too_long = str(base / ("a" * 3000))  # too long for the file system, within the API's 4096 bytes
    over = str(base / ("a" * 5000))
    for endpoint, body, expected in (
        (
            "/bulk_inference",
            {"input_folder_path": too_long, "output_folder_path": str(base / "o")},
            f"Input folder path does not exist: {too_long}",
        ),
        (
            "/single_inference",
            {"input_image_path": too_long + ".dcm", "output_folder_path": str(base / "o")},
            f"Input image path does not exist: {too_long}.dcm",
        ),
        (
            "/bulk_inference",
            {"input_folder_path": over, "output_folder_path": str(base / "o")},
            "Invalid path input_folder_path: longer than 4096 bytes",
        ),
    ):
        assert _post(client, auth, endpoint, body)[:2] == (400, expected)


def test_huge_chunked_body_is_413_not_truncated(client: Any, auth: dict[str, str], hostile: dict[str, Path]) -> None:
    """Without a Content-Length werkzeug would read 1 MiB and drop the rest silently: a
    valid object padded past the limit would then be taken as the request."""
    body = json.dumps(
        {"input_folder_path": str(hostile["base"] / "missing"), "output_folder_path": str(hostile["base"] / "o")}
    ).encode()
    padded = body + b" " * (2 << 20)
    kwargs = {
        "input_stream": io.BytesIO(padded),
        "environ_overrides": {"wsgi.input_terminated": True},
        "headers": {**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    }
    response = client.post("/bulk_inference", **kwargs)
    assert response.status_code == 413
    assert response.get_json() == {"Result": "Failure", "Data": None, "Message": "Request body too large"}
    kwargs["input_stream"] = io.BytesIO(body)  # the same body within the limit is read whole
    assert client.post("/bulk_inference", **kwargs).get_json()["Message"].startswith("Input folder path does not")
