"""The Redis result backend, minus the producer's result subscriptions.

Celery's Redis backend subscribes the *sending* process to the pub/sub channel of every
task it sends with a result (``on_task_call``), so that ``AsyncResult.get`` can wait
without polling. The API never waits that way: it polls its own job record (bulk) or
the task's stored result (single). Subscribing would only make the API hold one channel
per file of every job it ever sent (celery #5320, #6963), which is the memory a
10,000-file job must not cost. Everything else, chord counting included, is Celery's.
``AsyncResult.get`` still works: it subscribes on demand and then re-reads the stored
result, so nothing is missed.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


class QuietRedisBackend(RedisBackend):
    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None
