"""``GET /openapi.json``: the API's OpenAPI 3.1 document, without authentication.

The document is ``api/openapi.yaml`` (``docs/openapi.yaml`` links to it; it ships inside
the ``api`` package, so an installed image serves it too). It is read and parsed once
per process, on the first request, and served as JSON. Like ``/ping`` it is exempt
from the failed-authentication limit (``api.ratelimit``): a blocked address, or a
Redis outage, does not hide the contract. tests/api/test_openapi.py checks that it
names exactly the routes the app registers.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)


@functools.cache
def openapi_document() -> dict[str, Any]:
    import yaml

    text = resources.files("api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return dict(yaml.safe_load(text))


@functools.cache
def _document_json() -> bytes:
    return json.dumps(openapi_document(), ensure_ascii=False).encode("utf-8")


@bp.get("/openapi.json")
def openapi() -> Any:
    return Response(_document_json(), mimetype="application/json")
