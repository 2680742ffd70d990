"""The Redis result backend, waiting by polling instead of pub/sub.

Celery's Redis backend subscribes the *sending* process to a pub/sub channel for every
task it sends with a result (``on_task_call``) and for every member of every group
result it builds (``GroupResult`` sets up a barrier on each member), so that waits need
no polling. The API never waits that way: it polls its own job record (bulk) or one
stored result (single). Subscribing would only make it hold one channel per file of
every job it sent (celery #5320, #6963): the memory a 10,000-file job must not cost,
plus one UNSUBSCRIBE per result object when it is garbage-collected.

So this backend keeps Celery's Redis storage and chord counting unchanged and swaps
only the waiting half for Celery's synchronous (polling) one: ``AsyncResult.get`` still
works, by reading the stored result every ``interval`` seconds.

One more change: a full Redis (``maxmemory`` with ``noeviction``: OOM, a ResponseError)
is retried like a lost connection (``result_backend_always_retry``), since it passes
once Redis has room; Celery's Redis backend retries connection errors only, and a task
whose result could not be stored left its chord waiting for ever.
"""

from __future__ import annotations

from typing import Any

from celery.backends.base import SyncBackendMixin
from celery.backends.redis import RedisBackend
from redis.exceptions import OutOfMemoryError


def backend_url(redis_url: str) -> str:
    """The ``result_backend`` setting that selects this backend for ``redis_url``."""
    return f"workers.backend:QuietRedisBackend+{redis_url}"


class QuietRedisBackend(RedisBackend):
    wait_for_pending = SyncBackendMixin.wait_for_pending
    wait_for = SyncBackendMixin.wait_for
    iter_native = SyncBackendMixin.iter_native

    @property
    def is_async(self) -> bool:
        return False

    def exception_safe_to_retry(self, exc: Exception) -> bool:
        return isinstance(exc, OutOfMemoryError) or bool(super().exception_safe_to_retry(exc))

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        return list(results)

    def remove_pending_result(self, result: Any) -> Any:
        return result
