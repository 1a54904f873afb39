# Two commands matter: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests use: Prosody (XMPP interoperability), Chromium and its driver (browser tests),
# PostgreSQL (the store's tests start a throwaway server on loopback; tests/postgres.py).
DEBIAN_PACKAGES := prosody chromium chromium-driver postgresql

.PHONY: demo test typecheck unit debian-deps bench-simulator bench-bridge clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Installs only what is missing; needs root (CI runs as root).
debian-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The bridge with a Finesse simulator in the same process, on localhost.
demo: $(STAMP)
	$(PY) app.py --simulator

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest

test: $(STAMP) debian-deps
	$(PY) -m mypy
	$(PY) -m pytest

bench-simulator: $(STAMP)
	$(PY) bench/simulator_load.py

bench-bridge: $(STAMP)
	$(PY) bench/bridge_load.py --agents 2000 --rate 20 --duration 60

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache
