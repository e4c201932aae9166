# `make run` and `make test` set up a local venv when needed, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# One torch thread per process by default: on small shared machines two threads can be ~50x slower.
export OMP_NUM_THREADS ?= 1
export RAY_AUTH_MODE ?= disabled

.PHONY: setup run test test-cluster test-all bench lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The settings come from tuned/InvertedPendulum-v5.yaml (the first output line names it).
run: $(STAMP)
	$(VENV)/bin/agd-ray train --env InvertedPendulum-v5 --env-steps 15000 --seed 0 --output runs/make-run --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# Several Ray nodes on this machine (placement by node type, a lost node) and `ray job submit` of a sweep
# (tests/cluster, marked cluster; each test starts and stops its own nodes): about 6 minutes on 2 cores.
test-cluster: $(STAMP)
	$(PY) -m pytest -q -m cluster tests/cluster

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) bench/imagination.py

# Re-resolve the pinned set from requirements.in (needs network access to the package index).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -r requirements.in
	{ grep '^#' requirements.lock; .venv-lock/bin/pip freeze --exclude-editable | grep -v '^agd-ray' \
		| sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > .venv-lock/lock  # the header kept; torch without +cpu
	mv .venv-lock/lock requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) *.egg-info
