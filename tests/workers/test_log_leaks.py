"""No secret, token or patient name in any log (issue 4, hostile clients).

Through the live service (tests/support/live.py: gunicorn with ``api.gunicorn_conf``, a
real worker, Redis database 7) with a distinctive JWT secret and Flower password in
both processes' environment and phantoms whose PatientName is distinctive: a bulk job,
both kinds of single inference (whose answers do carry the name, so the name really
flowed through API, broker and worker), a token in a query string, forged and expired
tokens, and enough failures to trip the rate limit across gunicorn's processes. Then
every log (gunicorn's access log, the API log, the worker log) is searched.

Patient *ids* may appear: they name the output folders, and logs carry paths. Names
never may.

The same again with ``CXR_LOG_FORMAT=json`` (a second live service, Redis database
``json_logs``): every line of every log is one JSON object with the documented fields,
the job's lines carry its ``job_id``, the worker's its ``task_id`` and ``file_index``,
and the masking holds in that format too.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest

from api.ratelimit import KEY_PREFIX, TOO_MANY_FAILURES
from tests.support.live import PATIENT_NAME, PATIENT_NAME_PARTS, LiveService, live_service
from tests.support.service import redis_db_url

pytestmark = pytest.mark.service

#: The live service runs with the default limit (CXR_AUTH_FAIL_LIMIT unset).
DEFAULT_LIMIT = 20


def call(
    live: LiveService, method: str, path: str, body: Any = None, token: str | None = None, close: bool = False
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    if close:
        headers["Connection"] = "close"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(live.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_logs_hold_no_secret_token_or_patient_name(live: LiveService) -> None:
    exercise_and_search(live)


JSON_FIELDS = {"time", "level", "logger", "message", "process"}


def test_json_logs_one_object_per_line_with_job_and_task_and_no_leak(tmp_path: Path) -> None:
    with live_service(tmp_path, redis_db_url("json_logs"), CXR_LOG_FORMAT="json") as live_json:
        job_id, _ = exercise_and_search(live_json)
    # Read after the service stopped: the shutdown lines (Celery prints one to stdout) are JSON too.
    logs = live_json.log_files()
    assert "Warm shutdown" in decoded_messages(logs["worker.log"])
    lines: dict[str, list[dict[str, Any]]] = {}
    for name, text in logs.items():
        lines[name] = []
        for raw in text.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                raise AssertionError(f"{name}: not a JSON line: {raw[:300]!r}") from None
            assert isinstance(line, dict) and JSON_FIELDS <= set(line), (name, line)
            lines[name].append(line)
    access = [line for line in lines["access.log"] if line.get("path") == "/bulk_inference"]
    assert access and access[0]["method"] == "POST" and access[0]["status"] == 200
    assert any(line.get("job_id") == job_id and line["logger"].startswith("api") for line in lines["api.log"])
    worker_job = [line for line in lines["worker.log"] if line.get("job_id") == job_id]
    assert {line.get("file_index") for line in worker_job} >= {0}, worker_job[:3]
    assert all(line.get("task_id") for line in worker_job)
    assert any(line.get("task_id", "").startswith("single-") for line in lines["worker.log"])
    assert not any("celery@" in line["message"] and "v5" in line["message"] for line in lines["worker.log"])


def decoded_messages(text: str) -> str:
    """The text of a log; for JSON lines, each line's fields decoded (values, one per line)."""
    out = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            out.append(raw)
            continue
        out.extend(str(v) for v in line.values()) if isinstance(line, dict) else out.append(raw)
    return "\n".join(out)


def exercise_and_search(live: LiveService) -> tuple[str, dict[str, str]]:
    """A bulk job, both single inferences, a token in a URL, refused tokens up to the 429;
    then every log is searched for secrets, tokens and the patient's name."""
    out = live.data / "out-logs"
    status, body, _ = call(
        live,
        "POST",
        "/bulk_inference",
        {"input_folder_path": str(live.inputs), "output_folder_path": str(out)},
        live.token,
    )
    assert status == 200, body
    job_id = body["Data"]["job_id"]
    assert body["Data"]["processed"] == len(list(live.inputs.glob("*.dcm")))

    image = str(min(live.inputs.glob("*.dcm")))
    for extra in ({"save_to_disk": True, "output_folder_path": str(out / "single")}, {"save_to_disk": False}):
        status, body, _ = call(live, "POST", "/single_inference", {"input_image_path": image, **extra}, live.token)
        assert status == 200, body
        assert body["Data"]["metadata"]["patient_name"] == PATIENT_NAME  # the name did travel

    # A token where it does not belong (query string), and tokens the API refuses.
    status, _, _ = call(live, "GET", f"/jobs/{job_id}?token={live.token}", token=live.token)
    assert status == 200
    expired = jwt.encode(
        {"sub": "x", "jti": "j", "type": "access", "exp": int(time.time()) - 60}, live.jwt_secret, "HS256"
    )
    forged = jwt.encode(
        {"sub": "x", "jti": "j", "type": "access", "exp": int(time.time()) + 60}, "not-" + live.jwt_secret, "HS256"
    )
    answers = [
        call(live, "GET", f"/jobs/{job_id}", token=t, close=True) for t in [expired, forged] * (DEFAULT_LIMIT // 2)
    ]
    assert [a[0] for a in answers] == [401] * DEFAULT_LIMIT
    # The limit is shared by gunicorn's processes (the counter is in Redis): the next one is refused.
    status, body, headers = call(live, "GET", f"/jobs/{job_id}", token=forged, close=True)
    assert (status, body["Message"]) == (429, TOO_MANY_FAILURES)
    assert int(headers["Retry-After"]) >= 1
    for key in live.redis.scan_iter(match=f"*{KEY_PREFIX}*"):
        live.redis.delete(key)  # lift the lock-out: the load test comes from the same address

    time.sleep(0.5)  # the worker's last lines
    logs = live.log_files()
    assert set(logs) == {"access.log", "api.log", "worker.log"}
    # JSON lines are searched as written and as decoded (an escape must not hide a value).
    decoded = {name: decoded_messages(text) for name, text in logs.items()}
    # The logs were written and cover what happened (or the search below proves nothing).
    assert 'POST /bulk_inference HTTP/1.1" 200' in decoded["access.log"]
    assert f'GET /jobs/{job_id} HTTP/1.1" 429' in decoded["access.log"]
    assert f"job {job_id}: " in decoded["api.log"]
    assert "ratelimit" in decoded["api.log"]
    assert job_id in decoded["worker.log"] and "cxr.infer_single" in decoded["worker.log"]

    forbidden = {
        "JWT secret": live.jwt_secret,
        "Flower password": live.flower_password,
        "token": live.token,
        "expired token": expired,
        "forged token": forged,
        "any JWT": "eyJ",
        "patient name": PATIENT_NAME,
    }
    forbidden.update({f"patient name part {part}": part for part in PATIENT_NAME_PARTS})
    leaks = [
        f"{what} in {name}"
        for name, text in [*logs.items(), *decoded.items()]
        for what, value in forbidden.items()
        if value.lower() in text.lower()
    ]
    assert not leaks, leaks
    return job_id, logs
