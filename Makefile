# The README's two commands are `make run` and `make test`; .ci/run calls `make check test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Each stamp is rebuilt when pyproject.toml changes, so the venv follows the dependencies.
$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

run: $(VENV)/.run
	$(BIN)/edgefaas up

test: $(VENV)/.test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.test  # the vision benchmark builds its model with onnx (test extra)
	$(BIN)/python -m bench.invoke $(BENCH_ARGS)
	$(BIN)/python -m bench.deploy
	$(BIN)/python -m bench.spill
	$(BIN)/python -m bench.asyncq
	$(BIN)/python -m bench.vision
	$(BIN)/python -m bench.sandbox
	$(BIN)/python -m bench.overload

clean:
	rm -rf $(VENV) build *.egg-info
