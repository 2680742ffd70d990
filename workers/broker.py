"""kombu's Redis transport, made to live through a full Redis (``maxmemory``, ``noeviction``).

Why: the compose file runs Redis with ``maxmemory-policy noeviction``, so that a full
Redis refuses writes instead of silently dropping queued tasks or job records. Refused
writes then answer ``OOM command not allowed`` (redis-py's ``OutOfMemoryError``, a
``ResponseError``, not a connection error). kombu's transport met that in the worker's
main process and the worker died ("Unrecoverable error: OutOfMemoryError"), leaving its
messages to the visibility timeout (1 h). Three places changed, nothing else:

* **acknowledging** (``ack``, ``reject`` without requeue): kombu removed the message from
  its ``unacked`` hash and index inside MULTI/EXEC, and a full Redis refuses *every*
  command queued in a transaction, even HDEL and ZREM, which free memory. Here they are
  sent as a plain pipeline (message first, index entry second: a crash in between
  leaves an index entry without a message, which the restore sweep drops), and Redis
  accepts them however full it is;
* **taking a message** (``append``): after BRPOP took the message from its queue, kombu
  records it in the ``unacked`` hash (HSET, ZADD); a full Redis refuses both. The
  message is then kept in this process only (as with ``acks_late`` off) and runs; the
  only cost is that a worker killed before acknowledging it cannot give it back, and
  the stalled-job watchdog names the file ``lost``. Putting it back in the queue is no
  option: LPUSH is refused too;
* **requeueing and the visibility sweep** (``reject`` with requeue, ``restore_visible``):
  refused while Redis is full; the message stays in the ``unacked`` hash, where the
  next sweep (or another worker's) finds it once Redis has room.

Anything else a full Redis refuses in the main process is a channel error, which
``broker_channel_error_retry`` (celeryconfig) makes the consumer reconnect after,
instead of exiting. The API and workers select this transport through
``celeryconfig.broker_transport``; the broker URL stays a plain ``redis://`` URL.
No Celery, no TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import OutOfMemoryError

log = logging.getLogger(__name__)

#: What ``celeryconfig.broker_transport`` names.
TRANSPORT = "workers.broker:Transport"


class QoS(kombu_redis.QoS):
    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as conn:
                yield conn.pipeline(transaction=False)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        with self.pipe_or_acquire(pipe) as p:
            return p.hdel(self.unacked_key, delivery_tag).zrem(self.unacked_index_key, delivery_tag)

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except OutOfMemoryError:
            log.warning(
                "Redis is full (maxmemory): message %s could not be recorded as unacknowledged; "
                "it runs from this process's memory",
                delivery_tag,
            )
            virtual.QoS.append(self, message, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)
        except OutOfMemoryError:
            log.warning(
                "Redis is full (maxmemory): message %s could not be requeued; it stays unacknowledged in Redis "
                "and returns after the visibility timeout",
                delivery_tag,
            )
            virtual.QoS.ack(self, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        try:
            super().restore_visible(start, num, interval)
        except OutOfMemoryError:
            if not getattr(self, "_full_noted", False):  # once per episode, not once a second
                log.warning("Redis is full (maxmemory): the sweep for unacknowledged messages waits for room")
                self._full_noted = True
        else:
            self._full_noted = False


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
