"""gunicorn settings for the API: ``gunicorn -c python:api.gunicorn_conf 'api:create_app()'``.

One place for how the API is served, used by ``make run`` (``cxr.stack``), the
benchmarks, the tests that need a real HTTP server and the container images. Every
value comes from the environment (see the README's configuration table):

* ``CXR_HOST`` / ``CXR_PORT``: listen address (127.0.0.1:8500; containers use 0.0.0.0).
* ``CXR_API_WORKERS`` (2) processes x ``CXR_API_THREADS`` (8) threads, ``gthread``: a
  request mostly waits on Redis (the bulk ``wait`` polls for minutes), so threads, not
  processes, carry the concurrency, and the API's memory stays flat.
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
"""

from __future__ import annotations

import os

from engine.logs import log_format

log_format()  # an unknown CXR_LOG_FORMAT stops gunicorn here, with the reason

bind = f"{os.environ.get('CXR_HOST', '127.0.0.1')}:{os.environ.get('CXR_PORT', '8500')}"
worker_class = "gthread"
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
