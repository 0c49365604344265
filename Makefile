# Quick start: `make demo` runs the product on embedded local services; `make test` runs the suite.
# Both create .venv on first use and are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench,kafka-fast]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stackrec demo
	$(BIN)/stackrec down

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	-$(BIN)/stackrec down
	rm -rf .stackrec
