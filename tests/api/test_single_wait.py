"""workers.single: the marker that wakes a waiting single inference, against a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.service import redis_db_url
from workers.single import (
    DONE_TTL_S,
    OUTCOME_KEY,
    OUTCOME_TTL_S,
    done_key,
    notify_done,
    store_outcome,
    take_outcome,
    wait_done,
)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_db_url("single_wait"), decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def test_marker_wakes_the_waiter_at_once(client: redis.Redis) -> None:
    timer = threading.Timer(0.2, notify_done, args=(client, "single-abc"))
    timer.start()
    start = time.monotonic()
    assert wait_done(client, "single-abc", 5.0)
    assert time.monotonic() - start < 2.0  # woken by the marker, not by the 5 s timeout
    assert not client.exists(done_key("single-abc"))  # consumed


def test_no_marker_times_out(client: redis.Redis) -> None:
    assert not wait_done(client, "single-none", 0.1)


def test_unread_marker_expires(client: redis.Redis) -> None:
    notify_done(client, "single-late")  # the API gave up: nobody reads it
    assert 0 < client.ttl(done_key("single-late")) <= DONE_TTL_S


def test_the_answer_is_taken_once_and_expires_unread(client: redis.Redis) -> None:
    """The answer of a single inference (patient data, images) lives in Redis only until the
    API takes it, or OUTCOME_TTL_S when nobody does; it is not the task's Celery result."""
    answer = {"status": "processed", "data": {"metadata": {"patient_name": "Doe^Jane"}}}
    store_outcome(client, "single-abc", answer)
    assert 0 < client.ttl(OUTCOME_KEY.format(task_id="single-abc")) <= OUTCOME_TTL_S
    assert take_outcome(client, "single-abc") == answer
    assert take_outcome(client, "single-abc") is None  # read once: gone
    assert client.keys("*") == []


@pytest.mark.service  # starts a redis-server of its own
def test_the_answer_can_be_taken_from_a_full_redis(tmp_path: Any) -> None:
    """A Redis that reached maxmemory (noeviction) refuses every command inside MULTI/EXEC;
    the API must still be able to take an answer the worker stored before it filled up."""
    from tests.support.faults import private_redis

    with private_redis(tmp_path, appendonly=False) as server:
        full = redis.Redis.from_url(server.url, decode_responses=True)
        store_outcome(full, "single-full", {"status": "processed"})
        full.config_set("maxmemory", "1")
        assert take_outcome(full, "single-full") == {"status": "processed"}
        assert full.exists(OUTCOME_KEY.format(task_id="single-full")) == 0
