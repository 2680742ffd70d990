"""A client that lives inside the API host's network namespace (run with ``ip netns exec``).

The test process stays in the root namespace, which has no route to the test hosts;
this helper reads one JSON request a line on stdin and answers one JSON line on stdout:

* ``{"op": "http", "method": "GET", "path": "/ping", "body": {...}, "token": "..."}``
  -> ``{"status": 200, "json": {...}}`` (the API on 127.0.0.1:CXR_PORT in this namespace)
* ``{"op": "redis", "args": ["HGETALL", "key"]}`` -> ``{"result": ...}`` (REDIS_URL, as the
  API host reaches it: over its veth)
* ``{"op": "token"}`` -> ``{"token": "..."}`` (signed with the API's secret, as
  ``cxr token issue`` does)
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import redis


def http(request: dict[str, Any]) -> dict[str, Any]:
    url = f"http://127.0.0.1:{os.environ['CXR_PORT']}{request['path']}"
    data = json.dumps(request["body"]).encode() if "body" in request else None
    headers = {"Content-Type": "application/json"}
    if request.get("token"):
        headers["Authorization"] = request["token"]
    req = urllib.request.Request(url, data=data, headers=headers, method=request.get("method", "GET"))
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return {"status": resp.status, "json": json.loads(resp.read() or b"null")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "json": json.loads(exc.read() or b"null")}
    except OSError as exc:
        return {"status": 0, "error": str(exc)}


def main() -> int:
    client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True, socket_timeout=10)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "http":
            answer = http(request)
        elif request["op"] == "redis":
            answer = {"result": client.execute_command(*request["args"])}
        elif request["op"] == "token":
            from api import create_app
            from api.auth import issue_token

            answer = {"token": issue_token(create_app(), "multihost-test", days=1)}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
