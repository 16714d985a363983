# Two entry points for a fresh machine: `make demo` and `make test` (each installs first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: demo test test-fast typecheck install lint bench-scifact clean check-lower-bounds

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.demo-installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e '.[demo]'
	touch $@

# verl (RL adapter tests): same range as the `verl` extra, without its GPU-side pins; `verl-cpu` in `dev`
# brings what its loss/advantage modules and its v1 trainer package (TransferQueue, also --no-deps) import.
VERL_SPEC := verl>=0.9.1,<0.10
TQ_SPEC := TransferQueue>=0.1.10,<0.2

$(VENV)/.dev-installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps '$(VERL_SPEC)' '$(TQ_SPEC)'
	touch $@

install: $(VENV)/.dev-installed

demo: $(VENV)/.demo-installed
	$(VENV)/bin/embedkit demo

# Two pytest-xdist workers (one torch/OpenMP thread each, see tests/conftest.py); a test file stays on one worker so
# its module-scoped fixtures (tiny models, indexes) are built once. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(VENV)/.dev-installed
	$(PYTEST)

# Everything but the tests marked slow (servers, subprocesses, Ray, training): a quick inner loop.
test-fast: $(VENV)/.dev-installed
	$(PYTEST) -m "not slow"

typecheck: $(VENV)/.dev-installed
	$(PY) -m mypy

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .

# Throwaway venv with every dependency at its declared minimum (torch from constraints.txt); imports every module.
check-lower-bounds:
	$(PYTHON) .ci/lower_bounds.py

bench-scifact: $(VENV)/.dev-installed
	$(PY) benchmarks/beir_regression.py

clean:
	rm -rf $(VENV) build *.egg-info
