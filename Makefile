# Everything a fresh clone needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build, not the default one with several GB of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,embeddings]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/dialogue up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

# Benchmarks: results as JSON in bench/results/ (timing lives here, never in tests). About 15 minutes.
bench: install
	$(BIN)/python -m bench.turn_latency
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.long_conversation
	$(BIN)/python -m bench.open_conversations
	$(BIN)/python -m bench.streaming
	$(BIN)/python -m bench.profile

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
