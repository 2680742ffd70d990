"""Shared fixtures: the demo bundle, one Predictor per session, small phantom files.

TensorFlow is configured for 2 threads before any test touches it, and the model is
loaded once per session: loading it per test would dominate the run on 2 cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CXR_TF_THREADS", "2")

#: Every Redis database number the tests use, in one place. Each is flushed by the tests
#: that use it, at their start and end; ``make run`` and a default deployment use 0.
#: Tests that share a number run one after the other and flush it between them.
REDIS_DBS: dict[str, int] = {
    "queue_order": 2,  # tests/workers/test_queue_order.py: kombu's BRPOP order, no worker
    "bulk_dispatch": 2,  # tests/api/test_bulk_dispatch.py: bulk jobs sent in the background, no worker
    "gunicorn_worker": 2,  # tests/api/test_gunicorn_worker.py: gunicorn alone, no Celery worker
    "bundles": 1,  # tests/workers/test_bundle_service.py: a worker serving a third-party-style bundle
    "pacs": 3,  # tests/workers/test_pacs_orthanc.py: a worker that sends its results to Orthanc
    "compose": 4,  # tests/deploy/test_compose.py: the compose start-up test's API and worker
    "gpu": 4,  # tests/workers/test_gpu.py
    "single_wait": 5,  # tests/api/test_single_wait.py
    "rate_limit": 6,  # tests/api/test_rate_limit.py
    "internal_errors": 6,  # tests/workers/test_internal_errors.py
    "live": 7,  # the gunicorn + worker service of tests/support/live.py
    "engine": 9,  # tests/engine: the job store and the delivery decision, no worker
    "faults_workers": 10,  # tests/workers/test_faults_workers.py
    "watchdog": 11,  # tests/workers/test_faults_watchdog.py
    "faults_redis": 11,  # tests/workers/test_faults_redis.py
    "faults_disk": 11,  # tests/workers/test_faults_disk.py
    "service": 12,  # the session's API and worker (tests/support/service_fixtures.py)
    "time_limits": 14,  # tests/workers/test_time_limits.py
    "idle": 15,  # tests/api/test_job_records.py: a database no worker listens on
    "json_logs": 13,  # tests/workers/test_log_leaks.py: the live service with CXR_LOG_FORMAT=json
    "metrics": 8,  # tests/workers/test_prometheus.py: gunicorn and a worker serving metrics
    "missing": 99,  # past Redis's 16 databases: every command fails
}

pytest_plugins = ["tests.support.service_fixtures"]

#: Session fixtures that start worker or server processes (tests/support/service_fixtures.py):
#: a test that uses one is a ``service`` test, left out of ``make test-fast``.
PROCESS_FIXTURES = frozenset({"worker", "second_worker", "live"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.service)


#: Phantom files in tests are small: a 2k image costs seconds to write and read.
PHANTOM_TEST_SIZE = 384


@pytest.fixture(scope="session")
def demo_bundle_dir() -> Path:
    from inference.bundle import DEFAULT_BUNDLE_DIR

    assert (DEFAULT_BUNDLE_DIR / "manifest.json").is_file(), "demo bundle missing: run `make train`"
    return DEFAULT_BUNDLE_DIR


@pytest.fixture(scope="session")
def predictor(demo_bundle_dir: Path):
    from inference.bundle import read_bundle
    from inference.predict import Predictor, configure_tensorflow

    configure_tensorflow()
    return Predictor(read_bundle(demo_bundle_dir))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small phantom DICOM files (every storage variant) plus phantoms.json."""
    from demo.phantom_dicom import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, 8, seed=4242, size=PHANTOM_TEST_SIZE)
    return out
