# One command to install and run the demo, one to install and run the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-kill lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/synthgen demo --config configs/demo.yaml --out demo

test: $(STAMP)  # two workers, one per core; a module's tests stay on one (shared fixtures)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-kill: $(STAMP)  # the SIGKILL suite, slow cases included (not in CI)
	$(BIN)/python -m pytest -q -m sigkill

lint: $(STAMP)
	$(BIN)/ruff check synthgen tests
	$(BIN)/ruff format --check synthgen tests

clean:
	rm -rf $(VENV) demo
