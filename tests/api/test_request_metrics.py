"""The API's request metrics in-process (the session ``app``, prometheus-client's default
registry): route templates, never paths; 401 and 429 counted with their message; the
job counters of a bulk request. The multiprocess exporter is tests/workers/test_prometheus.py."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_route_template_and_status(client: Any, auth: dict[str, str]) -> None:
    route = {"route": "/jobs/<job_id>", "method": "GET", "status": "404"}
    before = sample("cxr_api_requests_total", **route)
    before_unmatched = sample("cxr_api_requests_total", route="<unmatched>", method="GET", status="404")
    before_401 = sample("cxr_api_auth_refused_total", status="401", message="Token missing")
    before_latency = sample("cxr_api_request_duration_seconds_count", route="/jobs/<job_id>", method="GET")

    assert client.get("/jobs/" + "f" * 32, headers=auth).status_code == 404
    assert client.get("/jobs/" + "e" * 32, headers=auth).status_code == 404
    assert client.get("/no/such/thing/abc123", headers=auth).status_code == 404
    assert client.get("/health").status_code == 401

    assert sample("cxr_api_requests_total", **route) == before + 2
    assert sample("cxr_api_request_duration_seconds_count", route="/jobs/<job_id>", method="GET") == before_latency + 2
    assert sample("cxr_api_requests_total", route="<unmatched>", method="GET", status="404") == before_unmatched + 1
    assert sample("cxr_api_auth_refused_total", status="401", message="Token missing") == before_401 + 1
    names = {s.labels.get("route") for m in REGISTRY.collect() for s in m.samples if s.name == "cxr_api_requests_total"}
    assert not any("abc123" in str(n) or "ffff" in str(n) for n in names), names  # never a path or a job id
