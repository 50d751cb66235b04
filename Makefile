# One command to run the service on SQLite, one to run the whole test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test install clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/flask --app todo_api init-db
	$(BIN)/flask --app todo_api run --port $${PORT:-5000}

test: install
	$(BIN)/pytest

clean:
	rm -rf $(VENV) instance .pytest_cache
