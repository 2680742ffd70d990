"""gunicorn settings for the API: ``gunicorn -c python:api.gunicorn_conf 'api:create_app()'``.

One place for how the API is served, used by ``make run`` (``cxr.stack``), the
benchmarks, the tests that need a real HTTP server and the container images. Every
value comes from the environment (see the README's configuration table):

* ``CXR_HOST`` / ``CXR_PORT``: listen address (127.0.0.1:8500; containers use 0.0.0.0).
* ``CXR_API_WORKERS`` (2) processes x ``CXR_API_THREADS`` (8) threads, ``gthread``: a
  request mostly waits on Redis (the bulk ``wait`` polls for minutes), so threads, not
  processes, carry the concurrency, and the API's memory stays flat. The worker class
  is ``api.gunicorn_worker.BufferingThreadWorker``: ``gthread`` whose event loop reads
  each whole request before a thread gets it, within ``CXR_HEADER_TIMEOUT_S`` (10 s; 408
  after), so slow clients cannot hold the threads (issue 15, item 6). Waiting bulk
  requests are capped per process by the app (``CXR_MAX_BULK_WAITS``). Behind a
  reverse proxy is still the recommended deployment (docs/deployment.md).
* ``timeout`` must exceed the longest synchronous request, the bulk wait
  (``CXR_BULK_WAIT_S``, 600 s) plus a margin, or gunicorn kills a healthy thread.
* No control socket: gunicorn >= 25.1 otherwise creates ``~/.gunicorn/gunicorn.ctl``,
  which two API instances on one host would fight over.
* Logs: the access log (stdout) has method, path *without the query string*, status,
  size, duration and user agent; no user, referer or query string, so a token a client
  puts in a URL never reaches it (the API reads tokens only from the header). The
  application's own loggers (``api.*``, ``flask-limiter``) and gunicorn's error log go to
  stderr at INFO. Every handler formats through ``engine.logs.RedactingFormatter``, the
  safety net that masks anything shaped like a JWT and this process's secret values;
  with ``CXR_LOG_FORMAT=json`` (``engine.logs.formatter``) both logs are JSON lines, the
  access lines with ``method``, ``path``, ``status`` and ``duration_ms`` fields.
* Metrics: with ``CXR_METRICS_PORT``, the master serves ``/metrics`` for all its
  processes (prometheus-client's multiprocess mode) and the queue and job gauges read
  from Redis at scrape time (``engine.monitoring``); bound to ``CXR_METRICS_HOST``
  (127.0.0.1): do not expose it.
"""

from __future__ import annotations

import os
from typing import Any

from engine import monitoring
from engine.logs import log_format

log_format()  # an unknown CXR_LOG_FORMAT stops gunicorn here, with the reason
# Metrics (CXR_METRICS_PORT): every gunicorn process writes its values to one folder,
# made here, in the master, before any worker is forked; the master serves their sum.
monitoring.prepare_multiprocess("api")

from api.gunicorn_worker import header_timeout_s

_header_timeout_s = header_timeout_s()  # a bad CXR_HEADER_TIMEOUT_S stops gunicorn here, with its reason

bind = f"{os.environ.get('CXR_HOST', '127.0.0.1')}:{os.environ.get('CXR_PORT', '8500')}"
worker_class = "api.gunicorn_worker.BufferingThreadWorker"
workers = int(os.environ.get("CXR_API_WORKERS", "2"))
threads = int(os.environ.get("CXR_API_THREADS", "8"))
timeout = int(float(os.environ.get("CXR_BULK_WAIT_S", "600"))) + 60
graceful_timeout = 30
control_socket_disable = True
accesslog = "-"
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {
            "()": "engine.logs.formatter",
            "fmt": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        },
        "access": {"()": "engine.logs.formatter", "fmt": "%(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    },
}


def when_ready(server: Any) -> None:
    """The master, once listening: the metrics exporter (a thread of the master)."""
    if monitoring.metrics_port() is None:
        return
    from engine.jobstore import JobStore
    from workers.app import queue_names

    store = JobStore.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), retries=0, socket_timeout=2.0)
    monitoring.serve("api", [monitoring.StateCollector(store, queue_names())])


def child_exit(server: Any, worker: Any) -> None:
    monitoring.process_exited(worker.pid)
