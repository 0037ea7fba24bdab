# The two commands: `make run` (install, migrate, serve on SQLite with the console SMS backend)
# and `make test` (install, run the whole test suite). Both create .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Local trial run: plain HTTP on loopback, so secure cookies are switched off here only.
run: install
	$(BIN)/dispatch-notifier db upgrade
	$(BIN)/dispatch-notifier sources add shopify --platform shopify --if-missing
	DISPATCH_SECURE_COOKIES=$${DISPATCH_SECURE_COOKIES:-false} \
		$(BIN)/dispatch-notifier serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The benchmarks (bench/README.md): needs `wrk` (apt-get install -y wrk) and PostgreSQL.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	bench/run_all.sh $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache
