# Everything a fresh clone needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser run test check lint typecheck pytest unit bench openapi clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build, not the default one with several GB of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,embeddings]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium and its matching chromedriver for tests/test_browser.py: the tests drive the
# system browser, and nothing downloads one at run time. The emoji font draws the chat's rating buttons
# in the tests' screenshots. Installed only when missing; sudo unless root.
BROWSER_PACKAGES := chromium chromium-driver fonts-noto-color-emoji
BROWSER_FILES := /usr/bin/chromium /usr/bin/chromedriver /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

browser:
	@if ! ls $(BROWSER_FILES) >/dev/null 2>&1; then \
		$(APT_GET) install -y $(BROWSER_PACKAGES) \
		|| { $(APT_GET) update && $(APT_GET) install -y $(BROWSER_PACKAGES); }; \
	fi

run: install
	$(BIN)/dialogue up --development

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install browser
	$(BIN)/pytest

test: lint typecheck pytest

# Fast feedback while editing: lint, types and the tests of pure code (no Temporal server, database or
# HTTP; marked `unit`), in about a minute. `make test` runs everything.
check: lint typecheck unit

unit: install
	$(BIN)/pytest -m unit -q

# The v1 contract, checked in: regenerate it after changing a route or model (tests/test_contract.py).
openapi: install
	$(BIN)/dialogue openapi --output openapi.json

# Benchmarks: results as JSON in bench/results/ (timing lives here, never in tests). About three hours, most of it the knowledge base's ingests (50,000 documents, then 5,000 twice beside turns).
bench: install
	$(BIN)/python -m bench.turn_latency
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.long_conversation
	$(BIN)/python -m bench.open_conversations
	$(BIN)/python -m bench.streaming
	$(BIN)/python -m bench.profile
	$(BIN)/python -m bench.llm_context
	$(BIN)/python -m bench.agent_loop
	$(BIN)/python -m bench.ceiling
	$(BIN)/python -m bench.levers
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.turn_cost
	$(BIN)/python -m bench.command_costs
	$(BIN)/python -m bench.flood
	$(BIN)/python -m bench.channels
	$(BIN)/python -m bench.open_conversations --default-bot
	$(BIN)/python -m bench.profile --default-bot
	$(BIN)/python -m bench.kb_ingest --keep .bench-stores
	$(BIN)/python -m bench.kb_memory --stores .bench-stores
	$(BIN)/python -m bench.kb_turns_during_ingest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
