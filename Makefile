# Two commands a newcomer needs: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint chaos bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[worker,embedded,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/torchfleet demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Fault injection (issue 7): worker kills, lost workers, warm shutdown, Redis restart and
# pause, poison jobs, duplicates, device faults; then the chaos report (total-queue check
# under every fault in random order, and a load-and-soak run). Fails if a job is lost.
# CHAOS_ARGS passes options to the report, e.g. CHAOS_ARGS="--soak-jobs 5000".
chaos: $(STAMP)
	TORCHFLEET_CHAOS=1 $(PY) -m pytest -q tests/integration/test_chaos.py tests/integration/test_chaos_redis.py
	$(PY) scripts/chaos.py all $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
