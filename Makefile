# The README's two commands: `make demo` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: lock setup demo test check bench bench-grpc bench-hedging bench-churn bench-workers bench-scale bench-perf-analyzer bench-eviction bench-prewarm clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "modelyard needs Python 3.11 or newer")'
	@echo "== setting up $(VENV) (first run downloads Triton and the rest; a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m deploy.localstack.demo $(ARGS)

# Two workers, each with its own session stack (tests/conftest.py); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) $(ARGS)

check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m loadtests.overhead --floor $(ARGS)

bench-grpc: setup
	$(PY) -m loadtests.grpc_overhead $(ARGS)

bench-hedging: setup
	$(PY) -m loadtests.hedging $(ARGS)

bench-churn: setup
	$(PY) -m loadtests.churn $(ARGS)

bench-workers: setup
	$(PY) -m loadtests.workers $(ARGS)

bench-scale: setup
	$(PY) -m loadtests.scale $(ARGS)

# perf_analyzer ships in the manylinux wheel of tritonclient 2.34.0 (newer wheels dropped it): a venv of its own,
# not the project's dependencies; it needs Debian's libb64-0d, and nginx is the comparison point.
PERF_VENV := loadtests/.perf-venv
$(PERF_VENV)/bin/perf_analyzer:
	$(PYTHON) -m venv $(PERF_VENV)
	echo '*' > $(PERF_VENV)/.gitignore
	$(PERF_VENV)/bin/pip install --quiet --disable-pip-version-check 'tritonclient[all]==2.34.0' nvidia-cuda-runtime-cu12

bench-perf-analyzer: setup $(PERF_VENV)/bin/perf_analyzer
	@dpkg -s libb64-0d nginx-light >/dev/null 2>&1 || apt-get install -y libb64-0d nginx-light
	$(PY) -m loadtests.perf_analyzer $(ARGS)

# The same Zipf sequence through real Tritons with --eviction lru, nextuse and gdsf, beside the simulator's prediction.
bench-eviction: setup
	$(PY) -m loadtests.eviction_real $(ARGS)

# A slice of the Azure trace, time compressed, through real Tritons with --prewarm off and on, beside the simulator.
bench-prewarm: setup
	$(PY) -m loadtests.prewarm_real $(ARGS)

# Rewrite constraints.txt from the working .venv (after changing dependencies in pyproject.toml).
lock: setup
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^modelyard'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
