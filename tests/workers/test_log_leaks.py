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

What Flower shows is checked the way Flower gets it: an event receiver on the broker
(task-sent, task-received, task-succeeded... with their arguments and results) for the
whole test, and the task results stored in Redis (Flower's ``/api/task/result``). Those
carry no patient name, patient id, path and no base64 image (issue 15, item 9).

The same again with ``CXR_LOG_FORMAT=json`` (a second live service, Redis database
``json_logs``): every line of every log is one JSON object with the documented fields,
the job's lines carry its ``job_id``, the worker's its ``task_id`` and ``file_index``,
and the masking holds in that format too.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest

from api.ratelimit import KEY_PREFIX, TOO_MANY_FAILURES
from tests.support.live import PATIENT_ID, PATIENT_NAME, PATIENT_NAME_PARTS, LiveService, live_service
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


@contextmanager
def event_tap(redis_url: str) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event on the live service's broker, as Flower's event consumer receives them."""
    from workers.app import create_celery_app

    app = create_celery_app(redis_url)
    events: list[dict[str, Any]] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not events:  # subscribed once the first event (a worker heartbeat) arrives
            assert time.monotonic() < deadline, "no Celery event within 20 s"
            time.sleep(0.1)
        try:
            yield events
        finally:
            time.sleep(1.0)  # the last task-succeeded events
            receiver.should_stop = True
            thread.join(10)


def test_logs_hold_no_secret_token_or_patient_name(live: LiveService) -> None:
    with event_tap(live.redis_url) as events:
        job_id, out, tokens = _run_the_service(live)
    _check_flower_sees_no_patient_data(live, events, out)
    _check_logs(live, job_id, tokens)


JSON_FIELDS = {"time", "level", "logger", "message", "process"}


def test_json_logs_one_object_per_line_with_job_and_task_and_no_leak(tmp_path: Path) -> None:
    with live_service(tmp_path, redis_db_url("json_logs"), CXR_LOG_FORMAT="json") as live_json:
        job_id, _, tokens = _run_the_service(live_json)
        _check_logs(live_json, job_id, tokens)
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


def _run_the_service(live: LiveService) -> tuple[str, Any, dict[str, str]]:
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
    return job_id, out, {"expired token": expired, "forged token": forged}


def _check_flower_sees_no_patient_data(live: LiveService, events: list[dict[str, Any]], out: Any) -> None:
    seen = {(e.get("type"), e.get("name")) for e in events}
    for name in ("cxr.infer_file", "cxr.infer_single", "cxr.finalize_job"):
        assert ("task-sent", name) in seen, (name, sorted(map(str, seen)))  # the check below is not vacuous
    kwargs = [e["kwargs"] for e in events if e.get("type") == "task-received" and e.get("name") == "cxr.infer_file"]
    assert kwargs and all("'job_id'" in k and "'index'" in k for k in kwargs), kwargs
    succeeded = [e for e in events if e.get("type") == "task-succeeded"]
    assert len(succeeded) >= len(list(live.inputs.glob("*.dcm"))) + 2
    results = {key: live.redis.get(key) or "" for key in live.redis.scan_iter(match="celery-task-meta-*", count=1000)}
    assert results, "no stored task result to check"
    forbidden = {
        "patient name": PATIENT_NAME,
        "patient id": PATIENT_ID,
        "input folder": str(live.inputs),
        "output folder": str(out),
        "a base64 PNG": "iVBORw0KGgo",
        "a base64 PDF": "JVBERi0",
        **{f"patient name part {part}": part for part in PATIENT_NAME_PARTS},
    }
    where = {
        **{f"event {e.get('type')} {e.get('name', '')}": json.dumps(e, default=str) for e in events},
        **{f"stored result {k}": v for k, v in results.items()},
    }
    leaks = sorted(
        {f"{what} in {w}" for w, text in where.items() for what, value in forbidden.items() if value in text}
    )
    assert not leaks, leaks[:10]


def _check_logs(live: LiveService, job_id: str, tokens: dict[str, str]) -> None:
    expired, forged = tokens["expired token"], tokens["forged token"]
    time.sleep(0.5)  # the worker's last lines
    logs = live.log_files()
    assert set(logs) == {"access.log", "api.log", "worker.log"}
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
