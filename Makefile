# One command to run the service on SQLite, one to run the whole test suite,
# one to benchmark the service beside the reference backend (bench/README.md).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test lint format bench install clean

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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache
