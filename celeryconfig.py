"""Celery settings for CXR Engine (read by ``workers.app``; every value has a reason).

Values come from the environment so that the API host and every worker host can share
one image and differ only in their environment. This module imports nothing from the
project (Celery imports it; the engine's own knobs are ``engine.settings``, read when a
worker starts). The reasoning, with sources, is in ``docs/reliability.md``; in short:

* per-file tasks are long (seconds on CPU) and idempotent (deterministic output paths,
  atomic publish), so they are acknowledged *late* and each worker process reserves only
  one message (prefetch 1): a crash mid-file redelivers the file, and no file waits
  behind another in a busy process's buffer;
* a soft time limit lets the task itself report a ``timeout`` skip; the hard limit
  (above it) kills a stuck child; Redis's visibility timeout is above the hard limit,
  or a long file would be delivered twice;
* a child process that dies mid-file (OOM, segfault, SIGKILL) hands its message back
  (``task_reject_on_worker_lost``) instead of failing the file; ``cxr.infer_file``
  counts deliveries in the job record and gives a file up as ``worker_lost`` after
  ``CXR_MAX_DELIVERIES`` (``engine.delivery``), so a file that kills its worker every
  time cannot loop;
* a whole worker that dies (host lost, SIGKILL) leaves its messages unacknowledged in
  Redis; they come back after the visibility timeout, found by a periodic sweep;
* results and the broker connection retry by themselves, and results expire.

Queues: ``single`` takes the single-image tasks and ``inference`` the per-file tasks of
bulk jobs (both run where the model is: GPU hosts); the default queue ``celery`` takes
the chord callbacks (cheap Redis and file-system work, any host). A worker started by
``make run``, ``cxr-worker`` (docker/worker.sh) or the compose files consumes all three.
A worker serves its queues in a fixed order, not round-robin (kombu's
``queue_order_strategy``, here ``workers.app.QueueOrder``): ``single`` first, then
``celery``, then ``inference``, whatever the order of ``-Q``. So a single inference
waits at most for the files already running, never behind a bulk job's queued files
(7.8 s behind a 120-file job before, 0.08 s idle), and a job's summary is written as
soon as its last file is, not after the files of the jobs queued behind it. Bulk files
cannot starve: single inferences are synchronous requests, each waited for by a client.
"""

from __future__ import annotations

import os


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

SINGLE_QUEUE = "single"
INFERENCE_QUEUE = "inference"
DEFAULT_QUEUE = "celery"
#: The order in which a worker serves its queues (``workers.app.QueueOrder``).
QUEUE_ORDER = (SINGLE_QUEUE, DEFAULT_QUEUE, INFERENCE_QUEUE)

#: Hard and soft per-file limits (seconds). A 2k x 2k file takes about 3 s on one CPU core.
#: The soft limit is clamped to the hard one (Celery refuses soft > hard); 0 disables it.
task_time_limit = _env_float("CXR_TASK_HARD_LIMIT_S", 300.0)
task_soft_time_limit = min(_env_float("CXR_TASK_SOFT_LIMIT_S", task_time_limit * 0.8), task_time_limit) or None
#: Longest retry countdown of ``cxr.infer_file`` (``retry_backoff_max``): a retried message
#: waits that long in a worker, unacknowledged, before it runs.
RETRY_BACKOFF_MAX_S = 60
#: The shortest visibility timeout under which no message can be redelivered while its
#: task still runs (one full run plus the longest retry countdown plus a margin).
SAFE_VISIBILITY_TIMEOUT_S = task_time_limit + RETRY_BACKOFF_MAX_S + 30


def _visibility_timeout() -> float:
    """``CXR_VISIBILITY_TIMEOUT_S`` as given; by default 1 h, at least the safe minimum.

    It is also how long the files of a worker that died as a whole (host lost, SIGKILL
    of the main process) wait before another worker takes them again, so an operator
    may choose it lower than the safe minimum (the tests do, to stay short). The price:
    a file running longer than the timeout is delivered a second time while it still
    runs. Publishing is idempotent (same folder, same bytes, atomic swap), so the
    duplicate is harmless but wasted work, and it counts towards CXR_MAX_DELIVERIES.
    """
    raw = os.environ.get("CXR_VISIBILITY_TIMEOUT_S", "").strip()
    if raw:
        return float(raw)
    return max(3600.0, SAFE_VISIBILITY_TIMEOUT_S)


visibility_timeout = _visibility_timeout()
#: How often a worker looks for messages whose visibility timeout passed (kombu's
#: default, 10 s x every 10th call, would add up to 100 s to a low timeout).
unacked_restore_interval = max(1, min(60, int(visibility_timeout // 10)))
#: The sweep holds a Redis lock (kombu's default expiry 300 s); a worker killed while
#: holding it would stop every other worker's sweep until it expires.
unacked_mutex_expire = max(10, min(300, unacked_restore_interval * 10))

broker_url = REDIS_URL
# The producer-side backend never subscribes to result channels: the API polls job
# records instead (see workers.backend; ``workers.backend.backend_url`` builds the same
# string, and a test checks that the two agree).
result_backend = f"workers.backend:QuietRedisBackend+{REDIS_URL}"

broker_transport_options = {
    "visibility_timeout": visibility_timeout,
    "unacked_restore_interval": unacked_restore_interval,
    "unacked_restore_throttle": 1,
    "unacked_mutex_expire": unacked_mutex_expire,
    "socket_keepalive": True,
    "health_check_interval": 30,
    "retry_on_timeout": True,
    "queue_order_strategy": "workers.app:QueueOrder",
}
result_backend_transport_options = {"visibility_timeout": visibility_timeout}
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # a worker waits for Redis rather than exiting
# kombu's Redis transport with acknowledgements a full Redis still accepts (maxmemory with
# noeviction refuses every write inside MULTI/EXEC): ``workers.broker`` says why. The URL
# stays ``redis://``; an explicit transport wins over the URL's scheme.
broker_transport = "workers.broker:Transport"
# A command the broker refuses (a full Redis answers OOM, a ResponseError: a "channel
# error" to Celery) makes the consumer reconnect and go on, instead of the whole worker exiting.
broker_channel_error_retry = True

result_expires = int(_env_float("CXR_RESULT_TTL_S", 86400.0))
result_backend_always_retry = True
# Storing a result (a task's STARTED state too) is retried on connection errors and on a
# full Redis (``workers.backend``), with full-jitter backoff from 0.1 s capped at 2 s, so
# a task resumes within 2 s of Redis coming back or having room (Celery's 10 s cap made it
# 10 s); 40 tries wait about 40 s in all.
result_backend_max_retries = 40
result_backend_base_sleep_between_retries_ms = 100
result_backend_max_sleep_between_retries_ms = 2000
redis_backend_health_check_interval = 30
redis_socket_keepalive = True
redis_retry_on_timeout = True
result_chord_ordered = True  # every worker must agree; this is Celery's default since 5.0

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_default_queue = DEFAULT_QUEUE
task_routes = {
    "cxr.infer_file": {"queue": INFERENCE_QUEUE},
    "cxr.infer_single": {"queue": SINGLE_QUEUE},
    "cxr.finalize_job": {"queue": DEFAULT_QUEUE},
}
task_acks_late = True
# A killed child's message goes back to the queue (acknowledging it would lose the file);
# the delivery cap in ``cxr.infer_file`` stops a file that kills its worker every time.
task_reject_on_worker_lost = True
task_track_started = True
task_send_sent_event = True  # Flower shows queued tasks, not only received ones
worker_send_task_events = True
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = True
# The first task in a fresh process loads the model; a child must not be declared dead
# while TensorFlow starts (default 4 s).
worker_proc_alive_timeout = 120.0
worker_hijack_root_logger = False
timezone = "UTC"
enable_utc = True
