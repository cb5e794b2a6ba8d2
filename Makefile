# confstream — the two commands of the README: `make run` and `make test`.
# Each creates its own virtual environment and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The signalwire 2.x SDK pins twilio==6.54, so it gets its own environment; the SDK test
# (tests/integration/test_sdk_https.py) runs a script in it and creates it when missing.
SW_VENV := .venv-signalwire
SW_STAMP := $(SW_VENV)/.installed-stamp

.PHONY: run test lint typecheck sysdeps demo bench soak cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(SW_STAMP):
	$(PYTHON) -m venv $(SW_VENV)
	$(SW_VENV)/bin/python -m pip install -q 'signalwire>=2,<3'
	touch $(SW_STAMP)

sysdeps:
	@bash scripts/ensure-sysdeps.sh

run: $(STAMP)
	$(VENV)/bin/confstream serve --show-first-account

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) $(SW_STAMP) sysdeps lint typecheck
	$(VENV)/bin/pytest -q

demo: $(STAMP) sysdeps
	$(PY) examples/demo.py

# Redis, PostgreSQL, Kamailio and NODES confstream nodes (default: one per core) on this
# machine; prints the SIP and REST addresses; Ctrl-C stops everything (docs/cluster.md).
NODES ?= $(shell nproc)
cluster: $(STAMP) sysdeps
	$(PY) -m confstream.tools.cluster --nodes $(NODES) $(if $(REALTIME),--realtime)

bench: $(STAMP)
	@bash scripts/ensure-sysdeps.sh --bench
	$(PY) -m bench.run --with-janus --streams-sweep 100,250,500,1000 --cluster-points 450,500,550,600,650 --cluster-repeats 2 --cluster-duration 25 --cluster-realtime --cluster-loadgen-with-node

# 30 minutes of 200 callers and 20 streams whose receivers stall, disconnect and return audio;
# writes docs/soak.md and docs/soak.png (override e.g. SOAK_ARGS="--duration 180").
SOAK_ARGS ?= --duration 1800 --callers 200 --streams 20
soak: $(STAMP)
	@bash scripts/ensure-sysdeps.sh
	$(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(SW_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info src/*.egg-info
