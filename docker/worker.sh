#!/bin/sh
# Container entrypoint of a CXR Engine worker (installed as `cxr-worker` in both images).
# One process per GPU unless CXR_WORKER_CONCURRENCY says otherwise (python -m workers.gpu
# counts the GPUs without starting CUDA in this, the parent, process); the node name is
# CXR_WORKER_NAME@<hostname>, which Flower and each job summary's `workers` list show.
# Extra arguments go to `celery worker`.
set -eu
concurrency=$(python -m workers.gpu concurrency)
exec celery -A workers.app worker \
    -Q "${CXR_WORKER_QUEUES:-single,inference,celery}" \
    -c "$concurrency" \
    -n "${CXR_WORKER_NAME:-cxr-worker}@%h" \
    --loglevel=INFO "$@"
