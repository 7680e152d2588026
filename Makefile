# The two commands a new user needs: `make demo` and `make test`. Everything else is optional.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PGTZ := UTC
export DAGSTER_HOME ?= $(CURDIR)
DEMO_USERS ?= 1000
DEMO_DIR := demo_data
DEMO_PROVIDERS := RATES_PROVIDER=file RATES_FILE=$(DEMO_DIR)/rates.json \
	PRICES_PROVIDER=file PRICES_FILE=$(DEMO_DIR)/prices.csv

.PHONY: venv demo test test-server lint ui bench clean db-stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## make demo: embedded PostgreSQL, migrations, 1,000 demo users, tonight's scoring, a summary.
demo: venv
	$(BIN)/scoring-pipeline migrate
	$(BIN)/scoring-pipeline demo-data --users $(DEMO_USERS) --out $(DEMO_DIR)
	$(DEMO_PROVIDERS) $(BIN)/scoring-pipeline score --refresh --date $$(date -u +%F)

## make test: the whole suite on the embedded PostgreSQL (no server needed).
test: venv
	$(BIN)/pytest

## make test-server: the PostgreSQL-backed tests again, on a server (SCORING_TEST_DATABASE_URL).
test-server: venv
	$(BIN)/pytest -m db

## make bench: nights through the daemon at 1,000 and 10,000 users (BENCH_USERS to change); the
## first on a fresh database, the later ones (BENCH_NIGHTS in all) measure what a night adds.
BENCH_USERS ?= 1000 10000
BENCH_NIGHTS ?= 3
bench: venv
	for n in $(BENCH_USERS); do \
		$(BIN)/scoring-pipeline bench --users $$n --nights $(BENCH_NIGHTS) || exit 1; \
	done

lint: venv
	$(BIN)/ruff check scoring_pipeline scoring_pipeline_tests migrations
	$(BIN)/ruff format --check scoring_pipeline scoring_pipeline_tests migrations
	$(BIN)/mypy scoring_pipeline
	$(BIN)/lint-imports

## make ui: the Dagster UI, daemon and run workers on http://127.0.0.1:3000, same database.
ui: venv
	$(BIN)/scoring-pipeline migrate
	$(DEMO_PROVIDERS) $(BIN)/scoring-pipeline services --port 3000

db-stop: venv
	$(BIN)/scoring-pipeline db-stop

clean:
	rm -rf $(DEMO_DIR) storage history logs schedules .pytest_cache .mypy_cache .ruff_cache
