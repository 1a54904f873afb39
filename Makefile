# Two commands matter: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck unit bench-simulator clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Until the bridge exists, the demo is the simulator alone: a Finesse pair on localhost.
demo: $(STAMP)
	$(PY) -m simulator

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest

test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest

bench-simulator: $(STAMP)
	$(PY) bench/simulator_load.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache
