"""A memory bound for each worker pool process, so that one file cannot take the host down.

``CXR_WORKER_MEMORY_MB`` (default 3072, ``0`` turns the bound off) is how much memory a
pool process may allocate beyond what it holds once the model is loaded: each child sets
its own ``RLIMIT_DATA`` in ``worker_process_init`` (``workers.tasks._load_model``) to its
data size at that moment plus that many MiB. An allocation past it fails: numpy raises
``MemoryError``, which the read stage turns into an ``unsupported_image`` skip naming the
limit (``inference.dicom_read``), and the process lives on. A native library that aborts
instead (TensorFlow's C++ allocator) ends the process; its message comes back and the
file is given up as ``worker_lost`` after ``CXR_MAX_DELIVERIES`` deaths. Either way the
rest of the host keeps its memory.

Why ``RLIMIT_DATA`` and not ``RLIMIT_AS`` or Celery's ``worker_max_memory_per_child``
(measured on this project's CPU worker, tensorflow-cpu 2.21, demo model):

* a pool child holding the model has VmSize 1.63 GB but VmData 0.51 GB and RSS 0.60 GB.
  VmSize (what ``RLIMIT_AS`` counts) is mostly shared libraries and address space
  TensorFlow reserves; with CUDA, the driver reserves tens of GB more and maps device
  memory into the process, so an address-space limit is either useless or breaks the
  GPU. ``RLIMIT_DATA`` (Linux 4.7 and later) counts private writable memory only: the
  heap, numpy arrays, thread stacks, what a decoder allocates;
* ``worker_max_memory_per_child`` is checked after a task ends: it replaces a process
  that grew, but does not stop the one file that is growing it.

Not measured on a GPU host (none was available): CUDA's pinned host buffers are device
mappings, which ``RLIMIT_DATA`` does not count, but if a GPU worker fails to start or to
allocate under the bound, raise ``CXR_WORKER_MEMORY_MB`` or set it to 0 (and say so).

Sizing: reading the largest image ``CXR_MAX_PIXELS`` allows by default (100 M values,
10000 x 10000 x 16 bits) and analysing it raised the child's RSS by 2.3 GB (3.3 GB before
the pixel pipeline computed its windows in place), and needed between 2 and 2.5 GB of
``RLIMIT_DATA`` headroom; a 2048 x 2048 file, 0.15 GB. The default, 3 GB, holds the
largest image with a margin. A host needs about concurrency x (0.6 GB + this) of memory;
on a smaller host, lower ``CXR_MAX_PIXELS`` and this together (about 23 bytes per value).
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV_WORKER_MEMORY_MB = "CXR_WORKER_MEMORY_MB"
DEFAULT_WORKER_MEMORY_MB = 3072


def headroom_mb(environ: Mapping[str, str] | None = None) -> int:
    """``CXR_WORKER_MEMORY_MB`` as a whole number of MiB (``0``: no bound); a bad value
    raises ``ValueError`` naming the variable, so a worker refuses to start with it."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_WORKER_MEMORY_MB, "").strip()
    if not raw:
        return DEFAULT_WORKER_MEMORY_MB
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_WORKER_MEMORY_MB} must be a whole number of MiB (0: no limit), got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{ENV_WORKER_MEMORY_MB} must be a whole number of MiB (0: no limit), got {raw!r}")
    return value


def data_size_bytes(status_path: str = "/proc/self/status") -> int | None:
    """This process's VmData (what ``RLIMIT_DATA`` is compared with), or None off Linux."""
    try:
        with open(status_path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def limit_process_memory(headroom: int) -> int | None:
    """Set this process's soft ``RLIMIT_DATA`` to its data size now plus ``headroom`` MiB.

    Returns the limit in bytes, or None when ``headroom`` is 0 or the data size cannot be
    read (not Linux). Never raises the hard limit; a lower hard limit wins.
    """
    if headroom <= 0:
        return None
    current = data_size_bytes()
    if current is None:
        log.warning("%s: no /proc/self/status here, the worker process's memory is not bounded", ENV_WORKER_MEMORY_MB)
        return None
    limit = current + (headroom << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit
