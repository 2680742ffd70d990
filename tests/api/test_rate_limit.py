"""Repeated failed authentications from one address get 429 (Flask-Limiter, Redis storage).

Real Redis (database 6 on ``CXR_TEST_REDIS``, flushed at start and end); the API through
Flask's test client, which lets each test choose the client address (``REMOTE_ADDR``).
The limit is small and short here ("4 per 2 seconds") so that the window reopening is
observed, not assumed. Lock-out is by address: once over the limit, a valid token from
that address gets 429 too (api/ratelimit.py says why); other addresses and ``/ping`` are
unaffected. Redis unreachable: the existing 503, never a 500.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api.config import ConfigError, load_config
from api.ratelimit import KEY_PREFIX, TOO_MANY_FAILURES
from cxr.stack import free_port
from tests.support.service import SECRET, redis_db_url

REDIS_URL = redis_db_url("rate_limit")
LIMIT, WINDOW_S = 4, 2
BROKER_DOWN = {"Result": "Failure", "Data": None, "Message": "Message broker unreachable; try again later"}


@pytest.fixture(scope="module")
def limit_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def make_app(redis_url: str = REDIS_URL, **overrides: Any) -> Any:
    from api import create_app

    config = {
        "TESTING": True,
        "REDIS_URL": redis_url,
        "CXR_JWT_SECRET": SECRET,
        "CXR_AUTH_FAIL_LIMIT": f"{LIMIT} per {WINDOW_S} seconds",
    }
    return create_app({**config, **overrides})


@pytest.fixture(scope="module")
def app(limit_redis: redis.Redis) -> Any:
    return make_app()


@pytest.fixture(scope="module")
def good_token(app: Any) -> str:
    from api.auth import issue_token

    return issue_token(app, "rate-limit-test")


def get(client: Any, address: str, token: str | None, path: str = "/jobs/0123456789abcdef", **headers: str) -> Any:
    if token is not None:
        headers["Authorization"] = token
    return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": address})


def limiter_keys(client: redis.Redis) -> list[str]:
    return [str(k) for k in client.scan_iter(match=f"*{KEY_PREFIX}*")]


def test_failures_from_one_address_get_429_then_the_window_reopens(
    app: Any, good_token: str, limit_redis: redis.Redis
) -> None:
    client = app.test_client()
    attacker, neighbour = "192.0.2.10", "192.0.2.11"
    bad = ["", "not-a-token", good_token[:-4], "Bearer " + good_token + "x"]
    for header in bad:  # LIMIT failures, each answered as usual
        assert get(client, attacker, header).status_code == 401

    refused = get(client, attacker, "still-guessing")
    assert refused.status_code == 429
    assert refused.get_json() == {
        "Result": "Failure",
        "Data": {"retry_after_s": refused.json["Data"]["retry_after_s"]},
        "Message": TOO_MANY_FAILURES,
    }
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW_S + 1
    assert refused.json["Data"]["retry_after_s"] == retry_after

    # Lock-out by address: a valid token from the blocked address gets 429 as well ...
    assert get(client, attacker, good_token).status_code == 429
    # ... while /ping, and other addresses, are untouched.
    ping = get(client, attacker, None, path="/ping")
    assert ping.status_code == 200 and ping.get_json() == {"status": "ok"}
    assert get(client, neighbour, good_token).status_code == 404  # authenticated; unknown job
    assert get(client, neighbour, "bad").status_code == 401

    # The counters are Redis keys under cxr:limit, each expiring within its window.
    keys = limiter_keys(limit_redis)
    assert any(attacker in k for k in keys) and any(neighbour in k for k in keys), keys
    for key in keys:
        assert 0 < limit_redis.ttl(key) <= WINDOW_S, (key, limit_redis.ttl(key))

    time.sleep(retry_after + 0.1)
    assert get(client, attacker, good_token).status_code == 404  # the window has room again
    deadline = time.monotonic() + WINDOW_S + 1
    while limiter_keys(limit_redis) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert limiter_keys(limit_redis) == []  # nothing is left to grow


def test_successful_requests_never_count(app: Any, good_token: str) -> None:
    client = app.test_client()
    for _ in range(3 * LIMIT):
        assert get(client, "192.0.2.20", good_token).status_code == 404
    assert get(client, "192.0.2.20", "bad").status_code == 401  # the first failure, not a 429


def test_x_forwarded_for_is_ignored_without_trusted_proxies(app: Any) -> None:
    client = app.test_client()
    codes = [
        get(client, "192.0.2.30", "bad", **{"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(LIMIT + 1)
    ]
    assert codes == [401] * LIMIT + [429]  # rotating the header does not dodge the limit


def test_trusted_proxy_lets_each_client_behind_it_have_its_own_budget(limit_redis: redis.Redis) -> None:
    behind_proxy = make_app(CXR_TRUSTED_PROXIES=1)
    client = behind_proxy.test_client()
    proxy = "192.0.2.40"
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    codes = [get(client, proxy, "bad", **forwarded).status_code for _ in range(LIMIT + 1)]
    assert codes == [401] * LIMIT + [429]
    assert get(client, proxy, "bad", **{"X-Forwarded-For": "203.0.113.8"}).status_code == 401
    assert any("203.0.113.7" in k for k in limiter_keys(limit_redis))
    assert not any(proxy in k for k in limiter_keys(limit_redis))


def test_redis_down_answers_503_not_500(good_token: str) -> None:
    down = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    client = down.test_client()
    for token in (good_token, "not-a-token", None):
        response = get(client, "192.0.2.50", token)
        assert response.status_code == 503, token
        assert response.get_json() == BROKER_DOWN
    response = client.post("/bulk_inference", json={}, headers={"Authorization": good_token})
    assert (response.status_code, response.get_json()) == (503, BROKER_DOWN)
    ping = get(client, "192.0.2.50", None, path="/ping")
    assert ping.status_code == 200  # liveness does not depend on Redis


def test_limit_settings_are_checked_at_start_up() -> None:
    base = {"CXR_JWT_SECRET": SECRET}
    assert load_config(base)["CXR_AUTH_FAIL_LIMIT"] == "20 per minute"
    assert load_config(base)["CXR_TRUSTED_PROXIES"] == 0
    assert load_config({**base, "CXR_TRUSTED_PROXIES": "2"})["CXR_TRUSTED_PROXIES"] == 2
    with pytest.raises(ConfigError, match="CXR_AUTH_FAIL_LIMIT"):
        load_config({**base, "CXR_AUTH_FAIL_LIMIT": "twenty a minute"})
    with pytest.raises(ConfigError, match="CXR_TRUSTED_PROXIES"):
        load_config({**base, "CXR_TRUSTED_PROXIES": "-1"})
