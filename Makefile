# `make run`: set up (if needed) and run the whole pipeline with DVC.
# `make test`: set up (if needed) and run the tests (`make test-slow`: the end-to-end tier; `make test-all`: both).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow test-all params ui figures install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import audiocnn, torch, torchaudio, nnAudio, lightning, mlflow, dvc" 
	touch $(STAMP)

install: $(STAMP)

params: $(STAMP)
	$(BIN)/audiocnn params

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/audiocnn results

# The suite without the end-to-end checks marked slow (DVC repro, served models, sweeps, DDP).
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow" --durations=40

# The slow tier alone; CI (.ci/run) runs `make test` and then this.
test-slow: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m slow --durations=20

test-all: test test-slow

# The MLflow UI over the project's store (mlflow.db; artifacts in mlruns/), on this machine only.
UI_PORT ?= 5000
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db -h 127.0.0.1 -p $(UI_PORT)

# The pictures in docs/img/ from this checkout's `make run` outputs and a throwaway MLflow
# server rendered by headless Chromium (tools/make_figures.py; `--no-ui` without Chromium).
figures: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/make_figures.py

clean:
	rm -rf data/raw data/prepared data/features data/models data/hydra metrics mlruns mlflow.db
