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
"""

from __future__ import annotations

import os

bind = f"{os.environ.get('CXR_HOST', '127.0.0.1')}:{os.environ.get('CXR_PORT', '8500')}"
worker_class = "gthread"
workers = int(os.environ.get("CXR_API_WORKERS", "2"))
threads = int(os.environ.get("CXR_API_THREADS", "8"))
timeout = int(float(os.environ.get("CXR_BULK_WAIT_S", "600"))) + 60
graceful_timeout = 30
control_socket_disable = True
accesslog = "-"
