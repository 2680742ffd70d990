"""Prometheus metrics through real processes, and the Grafana dashboard that reads them.

gunicorn (2 processes, ``api.gunicorn_conf``) and a worker with 2 prefork children, each
kind with its own ``CXR_METRICS_PORT``, on Redis database ``metrics``. A bulk job on a
folder with three phantoms, a file that is not DICOM (skipped ``unreadable_dicom``) and
a symbolic link out of the data roots (refused at discovery); refused tokens; requests
spread over both gunicorn processes. Then both exporters are scraped over HTTP: the
counts are exact (so the processes' numbers were summed, not one process's shown), the
scrape-time gauges read Redis, and every metric the dashboard (docs/grafana/cxr-engine.json)
queries is one of the metrics served. The real answers of this run (a finished bulk job,
its record, a 401, a 404, /health with a worker) are checked against the OpenAPI document
too: the Schemathesis run (tests/api/test_openapi.py) has no worker, so it never sees a
success of these routes.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api import serve_command
from cxr.stack import Child, stop_group
from tests.support.live import wait_http, warm_up
from tests.support.service import ROOT, SECRET, WorkerProcess, free_ports, redis_db_url, worker_env

pytestmark = pytest.mark.service
DASHBOARD = ROOT / "docs" / "grafana" / "cxr-engine.json"


@dataclass
class Served:
    url: str
    api_metrics: str
    worker_metrics: str
    data: Path
    token: str
    logs: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from demo.phantom_dicom import write_phantoms

    redis_url = redis_db_url("metrics")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    tmp = tmp_path_factory.mktemp("prometheus")
    data, outside = tmp / "data", tmp_path_factory.mktemp("outside")
    write_phantoms(data / "in", 3, seed=99, size=96)
    (data / "in" / "phantoms.json").unlink()
    (data / "in" / "notes.dcm").write_text("not DICOM at all")
    (outside / "elsewhere.dcm").write_bytes(b"x")
    (data / "in" / "link-out.dcm").symlink_to(outside / "elsewhere.dcm")
    write_phantoms(data / "warm", 1, seed=7, size=96)
    api_port, api_metrics, worker_metrics = free_ports(3)
    common = {"CXR_JWT_SECRET": SECRET, "CXR_DATA_ROOTS": str(data), "PYTHONUNBUFFERED": "1"}
    worker = WorkerProcess(
        "metrics", tmp / "worker.log", worker_env(redis_url, **common, CXR_METRICS_PORT=str(worker_metrics)), 2
    )
    api_env = worker_env(
        redis_url,
        **common,
        CXR_HOST="127.0.0.1",
        CXR_PORT=str(api_port),
        CXR_API_WORKERS="2",
        CXR_METRICS_PORT=str(api_metrics),
    )
    with (tmp / "api.log").open("wb") as api_log:
        api = subprocess.Popen(
            serve_command(),
            cwd=ROOT,
            env=api_env,
            stdout=api_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        from api import create_app
        from api.auth import issue_token
        from workers.app import create_celery_app

        token = issue_token(create_app({"REDIS_URL": redis_url, "CXR_JWT_SECRET": SECRET}), "metrics-test")
        url = f"http://127.0.0.1:{api_port}"
        wait_http(url + "/ping", api, tmp / "api.log")
        worker.wait_ready(create_celery_app(redis_url))
        warm_up(url, token, data / "warm")
        yield Served(
            url,
            f"http://127.0.0.1:{api_metrics}/metrics",
            f"http://127.0.0.1:{worker_metrics}/metrics",
            data,
            token,
            tmp,
        )
    finally:
        worker.stop()
        stop_group(Child("api", api, tmp / "api.log"))
        client.flushdb()
        client.close()


def call(url: str, method: str = "GET", body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if token is not None:
        headers["Authorization"] = token
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers, method=method), timeout=120
        ) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    assert "cxr_" in text, f"{url} is not our exporter (a port taken by another process?): {text[:300]}"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def matches_the_document(path: str, method: str, status: int, body: Any) -> None:
    import jsonschema_rs
    import yaml

    doc = yaml.safe_load((ROOT / "api" / "openapi.yaml").read_text(encoding="utf-8"))
    response = doc["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = {**response["content"]["application/json"]["schema"], "components": doc["components"]}
    errors = [e.message for e in jsonschema_rs.Draft202012Validator(schema).iter_errors(body)]
    assert not errors, (path, method, status, errors, body)


def test_api_and_worker_metrics_count_across_processes_and_feed_the_dashboard(served: Served) -> None:
    status, body = call(
        served.url + "/bulk_inference",
        "POST",
        {"input_folder_path": str(served.data / "in"), "output_folder_path": str(served.data / "out")},
        served.token,
    )
    assert status == 200, body
    summary = body["Data"]
    assert summary["processed"] == 3 and {s["reason"] for s in summary["skipped"]} == {
        "unreadable_dicom",
        "outside_data_roots",
    }
    matches_the_document("/bulk_inference", "post", 200, body)
    job = f"/jobs/{summary['job_id']}"
    for _ in range(10):  # a new connection each: gunicorn's two processes share them
        status, record = call(served.url + job, token=served.token)
        assert status == 200
    matches_the_document("/jobs/{job_id}", "get", 200, record)
    for _ in range(3):
        status, refused = call(served.url + job, token="not-a-token")
        assert status == 401
    matches_the_document("/jobs/{job_id}", "get", 401, refused)
    status, unknown = call(served.url + "/jobs/" + "0" * 32, token=served.token)
    matches_the_document("/jobs/{job_id}", "get", 404, unknown)
    status, health = call(served.url + "/health", token=served.token)
    assert status == 200
    matches_the_document("/health", "get", 200, health)
    assert call(served.url + "/no/such/route", token=served.token)[0] == 404

    api = scrape(served.api_metrics)
    # 10 polls through 2 processes, counted once each: the exporter sums every process.
    assert value(api, "cxr_api_requests_total", route="/jobs/<job_id>", method="GET", status="200") == 10
    assert value(api, "cxr_api_requests_total", route="/jobs/<job_id>", method="GET", status="404") == 1
    assert value(api, "cxr_api_requests_total", route="/bulk_inference", status="200") == 1
    assert value(api, "cxr_api_requests_total", route="<unmatched>", status="404") == 1
    assert value(api, "cxr_api_auth_refused_total", status="401", message="Invalid token") == 3
    assert value(api, "cxr_api_request_duration_seconds_count", route="/bulk_inference") == 1
    assert value(api, "cxr_jobs_submitted_total", layout="patient") == 1
    assert value(api, "cxr_discovery_refused_files_total", reason="outside_data_roots") == 1
    assert value(api, "cxr_state_up") == 1
    assert ("cxr_queue_depth", (("queue", "inference"),)) in api and ("cxr_queue_depth", (("queue", "celery"),)) in api
    assert value(api, "cxr_jobs_active", status="running") == 0
    assert ("cxr_oldest_running_job_age_seconds", ()) in api

    worker = scrape(served.worker_metrics)
    assert value(worker, "cxr_files_processed_total", kind="bulk") == 3
    assert value(worker, "cxr_files_processed_total", kind="single") == 1  # the warm-up
    assert value(worker, "cxr_files_skipped_total", kind="bulk", reason="unreadable_dicom") == 1
    assert value(worker, "cxr_stage_duration_seconds_count", stage="forward_gradcam") == 4
    assert value(worker, "cxr_stage_duration_seconds_count", stage="publish") == 3  # single: not saved
    decoded = {dict(ls)["transfer_syntax"] for (n, ls), v in worker.items() if n == "cxr_decode_duration_seconds_count"}
    assert decoded and all(decoded), decoded  # the phantoms' syntaxes, by pydicom's names
    assert value(worker, "cxr_file_deliveries_total", action="process") == 4
    assert value(worker, "cxr_jobs_finished_total", status="completed") == 1
    # Both prefork children loaded the model; both are in the one answer.
    assert value(worker, "cxr_model_load_seconds_count") == 2
    info = [ls for (n, ls), v in worker.items() if n == "cxr_model_info" and v == 1]
    assert info and dict(info[0])["name"] == "cxr-demo-cnn" and dict(info[0])["demo"] == "true"
    assert value(worker, "cxr_model_threshold", finding="Tuberculosis") > 0

    # Each process kind says in its log where its metrics are.
    assert f"api metrics on {served.api_metrics} (do not expose)" in (served.logs / "api.log").read_text()
    assert f"worker metrics on {served.worker_metrics} (do not expose)" in (served.logs / "worker.log").read_text()

    served_names = {name for name, _ in api} | {name for name, _ in worker}
    queried = dashboard_metrics()
    assert queried - served_names == set(), "the dashboard queries metrics nobody serves"


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    return {m for e in exprs for m in re.findall(r"\b(cxr_[a-z0-9_]+)", e)}


def test_the_dashboard_is_a_grafana_dashboard_model() -> None:
    """What Grafana's import needs: a title and uid, panels with unique ids, a type, a grid
    position inside 24 columns, and targets with a refId and an expression, on the
    Prometheus data source chosen by the dashboard's ``datasource`` variable."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"] == "cxr-engine" and dashboard["id"] is None
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    kinds = set()
    for panel in dashboard["panels"]:
        kinds.add(panel["type"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])
    assert kinds <= {"row", "timeseries", "stat", "table"}
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for needed in ("files per second", "queue depth", "p50", "p95", "skips by reason", "errors"):
        assert needed in titles
