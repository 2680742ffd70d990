# CXR Engine. `make test` and `make run` work on a fresh machine: they create .venv
# and install the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := var/demo-input
DEMO_OUT := var/demo-output

.PHONY: venv system-deps test test-fast run demo phantoms train eval bench typecheck lint format clean images compose-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Redis on 127.0.0.1:6379, Orthanc and dicom3tools: started or installed when missing.
system-deps:
	bash .ci/system-deps

test: venv system-deps
	$(PY) -m pytest -q

# The unit tests: no worker, API server or Redis server process is started (marker
# `service`, set in tests/conftest.py), nothing slow; under a minute on 2 cores.
test-fast: venv system-deps
	$(PY) -m pytest -q -m "not service and not slow and not multihost"

# `make run` starts the whole stack (API, Celery worker, Flower; Redis too if none
# answers), prints URLs, a token command and a curl line, and stops it all on Ctrl-C.
run: venv
	$(PY) -m cxr.stack

# In-process, no service: `cxr infer` on a demo folder of phantoms prepared on first run.
demo: venv
	@test -f $(DEMO_DIR)/phantoms.json || $(VENV)/bin/cxr phantoms $(DEMO_DIR) --count 6 --size 1024
	$(VENV)/bin/cxr infer $(DEMO_DIR) $(DEMO_OUT)
	@echo "outputs: $(DEMO_OUT)/<patient_id>/ (predictions JSON, heatmap PNG, source PNG, PDF report)"

phantoms: venv
	$(VENV)/bin/cxr phantoms var/phantoms --count 20

# Trains the demo bundle (inference/bundles/demo, with demo/train.py); never part of the tests.
train: venv
	$(VENV)/bin/cxr train

eval: venv
	$(VENV)/bin/cxr eval

# The whole benchmark (floor, cxr infer, in-process, service with 1 and 2 worker
# processes, single latency, a 10,000-file job): about 20 min on 2 cores. Flags go in
# BENCH_ARGS, e.g. `make bench BENCH_ARGS="--files 8 --big-job-files 500"`.
bench: venv
	$(PY) -m bench $(BENCH_ARGS)

# The container images of docker-compose.yml (needs a Docker daemon; BuildKit caches pip downloads).
images:
	docker build -f docker/Dockerfile.cpu -t cxr-engine:cpu .
	docker build -f docker/Dockerfile.gpu -t cxr-engine:gpu .

# Docker Compose's own parser on both compose files (needs Docker Compose v2; the tests
# check the YAML without it).
compose-check:
	sh docker/check-compose.sh

typecheck: venv
	$(VENV)/bin/mypy inference reports engine demo api workers cxr celeryconfig.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .

clean:
	rm -rf var .pytest_cache .mypy_cache
