"""Celery settings for CXR Engine (read by ``workers.app``; every value has a reason).

Values come from the environment so that the API host and every worker host can share
one image and differ only in their environment. The reasoning, with sources, is in
``shared/notes/celery.md`` section 3; in short:

* per-file tasks are long (seconds on CPU) and idempotent (deterministic output paths,
  atomic publish), so they are acknowledged *late* and each worker process reserves only
  one message (prefetch 1): a crash mid-file redelivers the file, and no file waits
  behind another in a busy process's buffer;
* a soft time limit lets the task itself report a ``timeout`` skip; the hard limit
  (above it) kills a stuck child; Redis's visibility timeout is above the hard limit,
  or a long file would be delivered twice;
* results and the broker connection retry by themselves, and results expire.

Queues: ``inference`` takes the per-file and single-image tasks (run where the model
is: GPU hosts); the default queue ``celery`` takes the chord callbacks (cheap Redis and
file-system work, any host). A worker started by ``make run`` consumes both.
"""

from __future__ import annotations

import os

from workers.backend import backend_url


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

INFERENCE_QUEUE = "inference"
DEFAULT_QUEUE = "celery"

#: Hard and soft per-file limits (seconds). A 2k x 2k file takes about 3 s on one CPU core.
#: The soft limit is clamped to the hard one (Celery refuses soft > hard); 0 disables it.
task_time_limit = _env_float("CXR_TASK_HARD_LIMIT_S", 300.0)
task_soft_time_limit = min(_env_float("CXR_TASK_SOFT_LIMIT_S", task_time_limit * 0.8), task_time_limit) or None
#: Must exceed the hard limit plus retry countdowns, or a slow file is delivered twice.
visibility_timeout = max(_env_float("CXR_VISIBILITY_TIMEOUT_S", 3600.0), task_time_limit * 2 + 60)

broker_url = REDIS_URL
# The producer-side backend never subscribes to result channels: the API polls job
# records instead (see workers.backend).
result_backend = backend_url(REDIS_URL)

broker_transport_options = {
    "visibility_timeout": visibility_timeout,
    "socket_keepalive": True,
    "health_check_interval": 30,
    "retry_on_timeout": True,
}
result_backend_transport_options = {"visibility_timeout": visibility_timeout}
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # a worker waits for Redis rather than exiting

result_expires = int(_env_float("CXR_RESULT_TTL_S", 86400.0))
result_backend_always_retry = True
result_backend_max_retries = 10
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
    "cxr.infer_single": {"queue": INFERENCE_QUEUE},
    "cxr.finalize_job": {"queue": DEFAULT_QUEUE},
}
task_acks_late = True
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
