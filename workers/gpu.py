"""GPU start-up for Celery workers: one GPU per prefork child, chosen before TensorFlow.

A GPU worker runs ``-c N`` prefork children for N GPUs. Each child must see exactly one
card, or every child's TensorFlow would place its model on GPU 0. CUDA reads
``CUDA_VISIBLE_DEVICES`` once, when a process first initialises it, so each child sets
it in ``worker_process_init`` before TensorFlow touches a device (the model loads
there too, after the fork: CUDA state does not survive ``fork``).

* The GPUs a worker may use: the worker's own ``CUDA_VISIBLE_DEVICES`` when set (ids
  or UUIDs, as CUDA takes them); else the cards the container or host exposes
  (``/dev/nvidia0``, ``/dev/nvidia1``, ...; read without loading CUDA in the parent).
* Child *i* (billiard's pool index, stable when a child is replaced) takes the
  *i*-th of them, modulo their number: with more children than GPUs, cards are
  shared, which TensorFlow's memory growth (``configure_tensorflow``) allows.
* No GPU: nothing is changed and the child runs on the CPU.
* ``CXR_MIXED_PRECISION=1`` turns on Keras' ``mixed_float16`` policy (read by
  ``inference.predict.configure_tensorflow``; ``Predictor`` rebuilds the loaded model
  under it); the device log names the policy in force.

``default_concurrency`` gives the worker's process count (``CXR_WORKER_CONCURRENCY``,
else one per GPU, else one per core); ``python -m workers.gpu concurrency`` prints it for
the container entrypoint (``docker/worker.sh``). This module never imports TensorFlow
at import time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_DEVICE_NODE = re.compile(r"nvidia(\d+)")
#: Values of CUDA_VISIBLE_DEVICES that hide every GPU.
_NO_GPU = {"", "-1", "none", "void"}


def visible_gpu_ids(environ: Mapping[str, str], device_nodes: Sequence[str] = ()) -> list[str]:
    """The GPUs this worker may use, in CUDA's order.

    ``CUDA_VISIBLE_DEVICES`` wins when it is set (an empty value or ``-1`` means none);
    otherwise ``device_nodes`` (names such as ``nvidia0``, as in ``/dev``) say how
    many there are. ``nvidiactl``, ``nvidia-uvm`` and other control nodes are not GPUs.
    """
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        if raw.strip().lower() in _NO_GPU:
            return []
        ids: list[str] = []
        for part in raw.split(","):
            part = part.strip()
            if not part or part == "-1":  # CUDA stops at the first invalid entry
                break
            ids.append(part)
        return ids
    # Inside a container the nodes keep the host's numbers (a container given the host's
    # GPUs 2 and 3 has /dev/nvidia2 and /dev/nvidia3) while CUDA numbers what it sees from
    # 0: only the count matters.
    count = sum(1 for name in device_nodes if _DEVICE_NODE.fullmatch(name))
    return [str(i) for i in range(count)]


def device_for_process(gpu_ids: Sequence[str], index: int | None) -> str | None:
    """The GPU id for pool process ``index`` (0-based), or None to run on the CPU.

    ``index`` None is a process outside a prefork pool (solo pool, ``cxr infer``): it
    keeps whatever it was given.
    """
    if not gpu_ids or index is None:
        return None
    return gpu_ids[index % len(gpu_ids)]


def default_concurrency(environ: Mapping[str, str], gpu_ids: Sequence[str], cores: int) -> int:
    """``CXR_WORKER_CONCURRENCY`` if set, else one process per GPU, else one per core."""
    raw = environ.get("CXR_WORKER_CONCURRENCY", "").strip()
    if raw:
        value = int(raw)
        if value < 1:
            raise ValueError(f"CXR_WORKER_CONCURRENCY must be at least 1, not {raw!r}")
        return value
    return len(gpu_ids) or max(1, cores)


def device_nodes(dev: Path = Path("/dev")) -> list[str]:
    try:
        return [p.name for p in dev.iterdir() if p.name.startswith("nvidia")]
    except OSError:
        return []


def pin_gpu_for_this_process() -> str | None:
    """In a pool child, before TensorFlow initialises: keep only this child's GPU visible."""
    from celery.utils.log import current_process_index

    gpu_ids = visible_gpu_ids(os.environ, device_nodes())
    index = current_process_index(base=0)
    chosen = device_for_process(gpu_ids, index)
    if chosen is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = chosen
        log.info("pool process %s: GPU %s of %s", index, chosen, ",".join(gpu_ids))
    return chosen


def describe_device() -> str:
    """The device this process's TensorFlow computes on: the GPU's name, or ``CPU``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details: dict[str, Any] = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU {details.get('device_name', gpus[0].name)}"


def log_device() -> str:
    """Log (and return) the device, after the model loaded; the policy is Keras' own."""
    import keras

    device = describe_device()
    log.info(
        "process %d runs on %s (CUDA_VISIBLE_DEVICES=%s, Keras policy %s)",
        os.getpid(),
        device,
        os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        keras.mixed_precision.global_policy().name,
    )
    return device


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["concurrency"]:
        sys.stderr.write("usage: python -m workers.gpu concurrency\n")
        return 2
    try:
        value = default_concurrency(
            os.environ, visible_gpu_ids(os.environ, device_nodes()), len(os.sched_getaffinity(0))
        )
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write(f"{value}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
