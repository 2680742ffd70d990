"""The OpenAPI document (api/openapi.yaml, served at ``GET /openapi.json``) against the app.

1. The document names exactly the routes and methods the Flask app registers (HEAD and
   OPTIONS, which Flask answers for every route, aside): no undocumented route, no
   documented route missing.
2. Schemathesis (through WSGI, in this process; the session ``app`` on real Redis, no
   worker) generates requests from the document, valid ones and ones that break it,
   and sends each with a valid token, with the ``Authorization`` value it generated
   from the security scheme (garbage) and with none. Every answer must be no
   5xx but a documented 503, have a documented status and content type, match the
   response schema, and every 4xx must carry the envelope; data that breaks the document
   must be refused with a 4xx, a request to a secured route without a token or with a
   generated one with a 401 (or 429), whatever else it holds (Schemathesis's
   ``ignored_auth`` knows only tokens given through its own auth configuration), a method
   a route does not serve with a 405 and an ``Allow`` header (the checks make those
   extra requests). (Schemathesis's own
   ``not_a_server_error`` is left out: it counts the documented 503 of ``/health``
   without a worker as a server error.) The number of examples per
   operation and mode is bounded (``EXAMPLES``) so that the run stays well under a
   minute on 2 cores; the counts are printed (``pytest -s``) and checked.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.service import ROOT

#: Examples per operation and generation mode; each is sent with and without a token.
EXAMPLES = 40
ENVELOPE_KEYS = {"Result", "Data", "Message"}
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item if method != "parameters"}


def registered(app: Any) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes.update((path, m) for m in (rule.methods or set()) - AUTOMATIC_METHODS)
    return routes


def test_the_document_is_served_and_is_the_file(client: Any) -> None:
    response = client.get("/openapi.json")  # no token
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    served = response.get_json()
    on_disk = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    assert served == on_disk
    assert served["openapi"].startswith("3.1.")
    assert served["components"]["securitySchemes"]["jwt"] == {
        **served["components"]["securitySchemes"]["jwt"],
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
    }


def test_every_route_is_documented_and_every_documented_route_exists(app: Any) -> None:
    doc = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    routes, described = registered(app), documented(doc)
    assert routes - described == set(), "routes the app serves that docs/openapi.yaml does not describe"
    assert described - routes == set(), "operations docs/openapi.yaml describes that the app does not serve"
    assert ("/openapi.json", "GET") in routes and ("/jobs/{job_id}", "GET") in routes


def test_document_messages_match_the_code() -> None:
    """The exact messages the document quotes as constants are the code's."""
    from api import BROKER_DOWN
    from api.inference_routes import BULK_OK, SINGLE_OK
    from api.ratelimit import TOO_MANY_FAILURES

    text = (ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8")
    for message in (BROKER_DOWN, BULK_OK, SINGLE_OK, TOO_MANY_FAILURES, "Request body must be a JSON object"):
        assert message in text, message


def test_schemathesis_finds_nothing(app: Any, token: str, capsys: pytest.CaptureFixture[str]) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        allow_header_conformance,
        content_type_conformance,
        missing_required_header,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
        unsupported_method,
    )

    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    checks = [
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,  # data that breaks the document gets a 4xx
        missing_required_header,  # a required header left out: a 4xx
        unsupported_method,  # a method the route does not serve: 405
        allow_header_conformance,  # ... with an Allow header naming the documented methods
    ]
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    by_auth: Counter[str] = Counter()
    envelope_misses: list[str] = []

    def send(case: Any, label: str, secured: bool) -> None:
        # The security scheme makes Schemathesis generate an Authorization value (garbage).
        # Each variant is set on the case itself, so that its checks judge what was sent.
        generated = dict(case.headers or {})
        key = next((k for k in generated if k.lower() == "authorization"), None)
        others = {k: v for k, v in generated.items() if k != key}
        variants = [("none", others)]  # a negative case may have dropped the header ("violates required")
        if key is not None:
            variants += [("valid", {**others, "Authorization": token}), ("generated", generated)]
        for auth, headers in variants:
            case.headers = dict(headers)
            response = case.call()
            statuses[response.status_code] += 1
            counts[label] += 1
            by_auth[auth] += 1
            if secured and auth != "valid":  # no token or a garbage one: refused, always
                assert response.status_code in (401, 429), (auth, case.method, case.formatted_path, response.text)
            # No 500; a 503 the document names (/health without a worker) is an answer.
            assert response.status_code != 500, (case.method, case.formatted_path, response.text[:300])
            case.validate_response(response, checks=checks)
            if 400 <= response.status_code < 500:
                body = response.json()
                if not (isinstance(body, dict) and set(body) == ENVELOPE_KEYS and body["Result"] == "Failure"):
                    envelope_misses.append(f"{case.method} {case.formatted_path}: {response.status_code}")

    def fuzz(strategy: Any, label: str, takes_input: bool, secured: bool) -> None:
        @settings(
            max_examples=EXAMPLES if takes_input else 3,  # /health waits 1 s for workers
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            send(case, label, secured)

        run()

    for result in schema.get_all_operations():
        operation = result.ok()
        raw = operation.definition.raw
        takes_input = bool(raw.get("parameters") or raw.get("requestBody"))
        secured = raw.get("security", schema.raw_schema["security"]) != []
        # Nothing to break in an operation without input: negative mode has no example.
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,)
        for mode in modes:
            fuzz(operation.as_strategy(generation_mode=mode), f"{operation.label} {mode.value}", takes_input, secured)

    total = sum(counts.values())
    with capsys.disabled():
        print(f"\nschemathesis: {total} requests, by status {dict(sorted(statuses.items()))}, by token {dict(by_auth)}")
        for label, n in sorted(counts.items()):
            print(f"  {label}: {n}")
    assert not envelope_misses, envelope_misses
    # Every operation was exercised (Schemathesis leaves out the schema's own URL, /openapi.json).
    assert {label.rsplit(" ", 1)[0] for label in counts} == {f"{m} {p}" for p, m in documented(schema.raw_schema)} - {
        "GET /openapi.json"
    }
    assert by_auth["valid"] and by_auth["none"] and by_auth["generated"]
    assert statuses[401] and statuses[400] and statuses[415]  # the fuzzing reached the checks it means to


def test_the_document_is_valid_openapi_31_and_every_ref_resolves() -> None:
    """Valid against the OpenAPI 3.1 meta-schema (Schemathesis's copy, checked with a
    broken document too), and every ``$ref`` resolves."""
    import schemathesis

    doc = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text(encoding="utf-8"))
    schemathesis.openapi.from_dict(doc).validate()
    broken = json.loads(json.dumps(doc))
    broken["paths"]["/ping"]["get"]["responses"]["200"]["content"] = 5
    with pytest.raises(Exception, match="5"):
        schemathesis.openapi.from_dict(broken).validate()
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(doc))
    assert refs
    for ref in refs:
        node: Any = doc
        for part in ref.split("/"):
            node = node[part]


def test_docs_link_points_at_the_served_file() -> None:
    link = ROOT / "docs" / "openapi.yaml"
    assert link.resolve() == (ROOT / "api" / "openapi.yaml").resolve()
    assert Path(link).read_text(encoding="utf-8").startswith("# The HTTP contract")


def test_the_document_is_served_to_a_locked_out_address(data_root: Path) -> None:
    """Like /ping, /openapi.json is exempt from the failed-authentication limit."""
    import redis

    from api import create_app
    from tests.support.service import SECRET, redis_db_url

    url = redis_db_url("rate_limit")
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        app = create_app(
            {
                "REDIS_URL": url,
                "CXR_JWT_SECRET": SECRET,
                "CXR_DATA_ROOTS": str(data_root),
                "CXR_AUTH_FAIL_LIMIT": "2 per minute",
            }
        )
        web = app.test_client()
        assert [web.get("/health").status_code for _ in range(3)] == [401, 401, 429]
        assert web.get("/openapi.json").status_code == 200
        assert web.get("/ping").status_code == 200
    finally:
        client.flushdb()
        client.close()
