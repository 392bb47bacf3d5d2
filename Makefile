# kpms-job: `make help` lists the targets.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help setup test test-all lint demo clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

setup: $(VENV)/.installed  ## create .venv from the lock file and install kpms-job into it

$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need Python 3.11 ($(PY))"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

test: setup  ## the whole test suite (what CI runs)
	$(BIN)/pytest -q

lint: setup  ## ruff
	$(BIN)/ruff check .

demo: setup  ## run the bundled example job
	$(BIN)/kpms-job run examples/manifest.yml

clean:  ## remove the example's project dir
	rm -rf examples/project
