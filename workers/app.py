"""The one Celery application of CXR Engine, configured from ``celeryconfig``.

``celery -A workers.app worker`` finds ``app`` here. Importing this module builds
nothing: ``app`` is made on first access (PEP 562 ``__getattr__``), which only a worker
(through ``-A workers.app`` or ``workers.tasks``) does; that is also when the worker's
logging hooks are connected. The API builds its own app with ``create_celery_app`` to
*send* tasks by name, and never imports ``workers.tasks`` (which brings in TensorFlow).
Task modules are listed in ``include`` and imported by workers only.

What Flower and any event consumer see of a task's arguments is the ``argsrepr`` and
``kwargsrepr`` of its message (task-sent, task-received events), made where the message
is built (``QuietAMQP``, so it holds for every sender: the API, the chord, a worker's
retry): for ``cxr.*`` tasks only the ids (``job_id``, ``index``, ``request_id``) and the
layout, never a path, an output folder or a patient id, which may all name a patient.
The tasks themselves get their arguments unchanged.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery import Celery, signals
from celery.app.amqp import AMQP
from kombu.utils.scheduling import priority_cycle

import celeryconfig
from workers.backend import backend_url

SINGLE_QUEUE = celeryconfig.SINGLE_QUEUE
INFERENCE_QUEUE = celeryconfig.INFERENCE_QUEUE
DEFAULT_QUEUE = celeryconfig.DEFAULT_QUEUE
#: Every queue the project uses, in the order workers serve them.
QUEUES = celeryconfig.QUEUE_ORDER


class QueueOrder(priority_cycle):
    """kombu's ``queue_order_strategy`` for the Redis transport (``celeryconfig``).

    Each BRPOP lists the consumed queues in this order, and Redis pops from the first
    non-empty one: ``single``, then ``celery``, then ``inference``, then any other queue
    in ``-Q`` order. kombu's ``priority`` strategy would use the ``-Q`` order, which an
    operator may write either way.
    """

    def update(self, it: Any) -> None:
        order = {name: rank for rank, name in enumerate(QUEUES)}
        self.items[:] = sorted(it, key=lambda queue: order.get(queue, len(order)))


_lock = threading.Lock()
_worker_app: list[Celery] = []
_metrics_served: list[int] = []


#: The keyword arguments of ``cxr.*`` tasks that events and Flower may show.
SHOWN_KWARGS = ("job_id", "index", "request_id", "layout")


def shown_arguments(name: str, args: Any, kwargs: Any) -> tuple[str | None, str | None]:
    """``(argsrepr, kwargsrepr)`` for a ``cxr.*`` task's message; ``(None, None)``: Celery's own."""
    if not name.startswith("cxr."):
        return None, None
    shown = {k: kwargs[k] for k in SHOWN_KWARGS if isinstance(kwargs, dict) and k in kwargs}
    return ("()" if not args else f"({len(args)} positional arguments, not shown)"), repr(shown)


class QuietAMQP(AMQP):
    """Celery's message builder, with the ``argsrepr``/``kwargsrepr`` of ``shown_arguments``."""

    def as_task_v2(
        self, task_id: str, name: str, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any
    ) -> Any:
        argsrepr, kwargsrepr = shown_arguments(name, args, kwargs)
        if argsrepr is not None:
            options["argsrepr"], options["kwargsrepr"] = argsrepr, kwargsrepr
        return super().as_task_v2(task_id, name, args, kwargs, *rest, **options)


def worker_command(concurrency: int | str, node_name: str, *extra: str, python: str | None = None) -> list[str]:
    """The command line of a worker that serves every queue in the order workers serve
    them (``make run``, the tests' and the benchmark's workers): one place for it."""
    return [
        python or sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        ",".join(QUEUES),
        "-c",
        str(concurrency),
        "-n",
        node_name,
        "--loglevel=INFO",
        *extra,
    ]


def create_celery_app(redis_url: str | None = None) -> Celery:
    """The app; ``redis_url`` overrides ``REDIS_URL`` for broker and results (the API's config)."""
    app = Celery("cxr", include=["workers.tasks"], amqp=QuietAMQP)
    app.config_from_object(celeryconfig)
    if redis_url is not None:
        app.conf.update(broker_url=redis_url, result_backend=backend_url(redis_url))
    return app


def worker_app() -> Celery:
    """The worker's app, made once per process, with the worker's logging hooks."""
    with _lock:
        if not _worker_app:
            from engine.logs import (
                bind_task_context,
                clear_log_context,
                route_native_output,
                setup_worker_logging,
                stop_native_output,
            )

            # What a worker's log never carries (task results hold patient names; engine/logs.py).
            signals.after_setup_logger.connect(setup_worker_logging, weak=False)
            signals.after_setup_task_logger.connect(setup_worker_logging, weak=False)
            signals.celeryd_after_setup.connect(_check_queues, weak=False)
            # The job, task and file of each line (CXR_LOG_FORMAT=json); no banner in JSON mode.
            signals.task_prerun.connect(bind_task_context, weak=False)
            signals.task_postrun.connect(clear_log_context, weak=False)
            signals.celeryd_init.connect(_json_from_the_start, weak=False)
            signals.celeryd_init.connect(_start_metrics, weak=False)
            signals.worker_ready.connect(_announce_metrics, weak=False)
            signals.worker_process_init.connect(route_native_output, weak=False)  # before the model loads
            signals.worker_process_shutdown.connect(stop_native_output, weak=False)
            _worker_app.append(create_celery_app())
        return _worker_app[0]


def _check_queues(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A worker that takes bulk files but not single inferences (a ``-Q inference,celery``
    from before the ``single`` queue existed) is legal, but someone must serve ``single``."""
    consumed = set(instance.app.amqp.queues.consume_from) if instance is not None else set()
    if INFERENCE_QUEUE in consumed and SINGLE_QUEUE not in consumed:
        logging.getLogger(__name__).warning(
            "this worker consumes %r but not %r: single inferences need a worker that does (-Q %s)",
            INFERENCE_QUEUE,
            SINGLE_QUEUE,
            ",".join(QUEUES),
        )


def queue_names() -> list[str]:
    """Every queue a task is routed to, and the default one (the metrics' queue depths)."""
    routed = {str(route["queue"]) for route in celeryconfig.task_routes.values() if "queue" in route}
    return sorted(routed | {celeryconfig.task_default_queue})


def _start_metrics(**_: Any) -> None:
    """``celeryd_init``, in the main process before the pool forks: with ``CXR_METRICS_PORT``,
    the folder every prefork child writes its metrics to, and the exporter that sums them."""
    from engine import monitoring

    if monitoring.prepare_multiprocess("worker") is not None:
        port = monitoring.serve("worker")
        if port is not None:
            _metrics_served.append(port)


def _announce_metrics(**_: Any) -> None:
    """``worker_ready``: say where the metrics are, now that the worker's log exists."""
    import logging

    from engine.monitoring import metrics_host

    for port in _metrics_served:
        logging.getLogger(__name__).info("worker metrics on http://%s:%d/metrics (do not expose)", metrics_host(), port)


def _json_from_the_start(instance: Any = None, **_: Any) -> None:
    """``celeryd_init``, before Celery's own logging is set up. With ``CXR_LOG_FORMAT=json``:
    no start-up banner (it is not JSON; the same as ``celery -q``), and Python warnings go
    through logging; until Celery replaces the root logger's handlers with its own (whose
    formatters ``setup_worker_logging`` then turns to JSON), a JSON handler on stderr
    takes them (Celery's warning about running as root comes before its logging)."""
    import logging
    import sys

    from engine.logs import formatter, log_format, route_native_output

    if log_format() != "json" or instance is None:
        return
    route_native_output()
    instance.quiet = True
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter())
        root.addHandler(handler)


def __getattr__(name: str) -> Any:
    if name == "app":
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
