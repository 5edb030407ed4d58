# Two commands a newcomer needs: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint chaos compose-test bench clean

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

# Fault injection (issues 7, 12, 14): worker kills, lost workers, warm shutdown, Redis restart
# and pause, poison jobs and stages, duplicates, device faults, the online lane under the same
# faults, Redis restarts during training, clock skew, a full Redis; then the chaos report
# (every check of scripts/chaos.py). Fails if a job or a lane request is lost.
# CHAOS_ARGS passes options to the report, e.g. CHAOS_ARGS="--soak-jobs 5000".
chaos: $(STAMP)
	TORCHFLEET_CHAOS=1 $(PY) -m pytest -q tests/integration/test_chaos.py \
		tests/integration/test_chaos_redis.py tests/integration/test_chaos_lane.py \
		tests/integration/test_chaos_outage.py tests/integration/test_chaos_pipeline.py \
		tests/integration/test_chaos_effects.py
	$(PY) scripts/chaos.py all $(CHAOS_ARGS)

# The compose stack for real (issue 15), as root on a Debian host: installs docker.io,
# docker-compose and debootstrap if missing, starts its own dockerd if none answers, builds the
# images without an image registry, brings the stack up, scales it to 3 workers, trains,
# compresses and checks a few hundred jobs from the producer container, kills a worker
# mid-training, restarts Redis, stops the workers warm, then `down -v`, stops the dockerd it
# started and undoes its host changes. Fails if a job is lost or an answer is wrong.
# Images and wheels are cached (~/.cache/torchfleet/compose-test); a second run is quicker.
compose-test: $(STAMP)
	$(PY) -m deploy.compose_test $(COMPOSE_TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
