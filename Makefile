# face_pipelines: the two commands are `make run` and `make test`.
# Both create .venv if missing and (re)install only when pyproject.toml or constraints.txt changed.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: run test lint format bench mlflow-ui clean-data help

help:
	@echo "make run        set up .venv and run 'kedro run --pipelines synth' on the embedded FaceWorld"
	@echo "make test       set up .venv with test extras and run the test suite"
	@echo "make lint       ruff check + format check"
	@echo "make bench      CPU benchmark set -> benchmarks/results/*.json"
	@echo "make mlflow-ui  MLflow UI on http://127.0.0.1:5000 (sqlite:///mlflow.db)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Stamp files make installs idempotent: they are newer than their inputs after a successful install.
$(VENV)/.installed-run: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[test]"
	@touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/kedro run --pipelines synth

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: $(VENV)/.installed-test
	@# the pipelines' OpenMP policy (face_pipelines.settings); bench_omp_wait.py compares both
	@for s in benchmarks/bench_*.py; do echo "== $$s"; \
	  OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/python $$s || exit 1; done

mlflow-ui: $(VENV)/.installed-run
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean-data:
	find data -mindepth 2 ! -name .gitkeep -delete 2>/dev/null || true
