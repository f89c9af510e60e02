# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing
# and install the project with the exact versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_OUT ?= demo_out

.PHONY: install demo test test-all lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffcoremix demo -o $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

test-all: lint typecheck
	$(BIN)/pytest -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/filter_quality.py
	$(BIN)/python benchmarks/filter_speed.py
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/mixing.py
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/finetune.py
	$(BIN)/python benchmarks/generation_quality.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
