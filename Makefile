# One command to run the service on SQLite, one to run the whole test suite (and a quick run on SQLite alone,
# without Postgres, Redis or Node; the drills alone; the suite with coverage), one to benchmark the service beside
# the reference backend (bench/README.md). docs/testing.md describes each.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test test-quick drills coverage lint format bench pins install clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

# Development mode (FLASK_DEBUG=1): the reloader, and no secret needed (cursors are signed with a development one).
run: install
	$(BIN)/flask --app todo_api init-db
	FLASK_DEBUG=1 $(BIN)/flask --app todo_api run --port $${PORT:-5000}

test: install
	$(BIN)/pytest

# The tests that need nothing but Python, on SQLite: those marked postgres, redis or node are left out.
test-quick: install
	$(BIN)/pytest -m "not postgres and not redis and not node"

# The drills of tests/drills/ alone: outages, shutdown, slow clients, logs, costly requests (a few minutes).
drills: install
	$(BIN)/pytest -m drills

# The whole suite, measuring which lines of todo_api/ it runs; fails under the floor in pyproject.toml.
coverage: install
	$(BIN)/pytest --cov

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/run.py $(ARGS)

# Regenerate the pinned, hashed requirements from requirements.in and requirements-dev.in (pip-tools).
pins:
	$(PYTHON) -m venv .pins-venv
	.pins-venv/bin/pip install --quiet pip-tools==7.6.2
	.pins-venv/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links -o requirements.txt requirements.in
	.pins-venv/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links -o requirements-dev.txt requirements-dev.in
	rm -rf .pins-venv

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .coverage htmlcov
