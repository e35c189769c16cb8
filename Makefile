# ct: two commands on a fresh machine. `make demo` sets up and plays the scenario; `make test` runs the tests.
# Only python3 (3.11+) and make are assumed. The virtualenv is built from the committed lock.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ct-installed
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)
export CT_HOME ?= $(CURDIR)/.ct
export GX_ANALYTICS_ENABLED := false
export TQDM_DISABLE := 1

.PHONY: demo test up drop-batch lint typecheck bench install browser clean

# uv installs the lock in about half the time pip takes (it downloads and unpacks in parallel; torch and its CUDA
# libraries are 4 GB unpacked). It compiles the bytecode up front, as pip does: where PYTHONDONTWRITEBYTECODE is set,
# every step's process would otherwise compile its imports again. pip stays the fallback, for a machine that reaches
# its packages only through pip's own configuration (a mirror in pip.conf, say), which uv does not read.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ct needs Python 3.11+")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the locked environment into $(VENV) ..."
	$(PY) -m pip install --quiet uv==$(UV_VERSION) && $(UV) -r requirements.lock && $(UV) --no-deps -e . \
	  || { echo "uv could not install the lock; installing it with pip instead (slower)"; \
	       $(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet -r requirements.lock \
	       && $(PY) -m pip install --quiet --no-deps -e .; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ct_airflow.launcher.local demo

# Airflow on 127.0.0.1:8080 and MLflow on 127.0.0.1:5000; `make up AIRFLOW_PORT=8081 MLFLOW_PORT=5001` moves them
# (a port that is taken is refused before anything starts, with the line that picks another).
up: $(STAMP)
	$(PY) -m ct_airflow.launcher.local up

drop-batch: $(STAMP)
	$(PY) -m ct_airflow.launcher.local drop-batch

lint: $(STAMP)
	$(VENV)/bin/ruff check ml plugins dags tests bench docker
	$(VENV)/bin/ruff format --check ml plugins dags tests bench docker

typecheck: $(STAMP)
	$(VENV)/bin/mypy ml plugins

# Two workers: the server-profile stack (with its 30-day backfill), the fault sweeps and the rest run side by
# side; each group that shares a costly setup stays on one worker (tests/conftest.py, XDIST_GROUPS).
test: $(STAMP) lint typecheck browser
	$(PY) -m pytest -n 2 --dist loadgroup --durations=12

# The browser test (tests/integration/test_operating.py) drives Debian's chromium. Installed here when it is
# missing and can be (root, or passwordless sudo, with apt-get); otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser test (apt-get) ..."; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	      || echo "note: could not install chromium; the browser test will skip"; \
	  else echo "note: chromium is missing and cannot be installed here (needs root and apt-get); the browser test will skip"; fi; }

bench: $(STAMP)
	$(PY) bench/dag_parse.py
	$(PY) bench/validate_drift.py
	$(PY) bench/exit_stress.py
	$(PY) bench/gate_power.py
	$(PY) bench/guard_frontier.py
	$(PY) bench/drift_power.py
	$(PY) bench/backfill_replay.py
	$(PY) bench/your_data.py
	$(PY) bench/train_throughput.py
	$(PY) bench/train_memory.py

clean:
	rm -rf .ct .pytest_cache .mypy_cache .ruff_cache
