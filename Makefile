# The two set-up commands of the README. Each creates the virtual environment on first use.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint
demo: $(VENV)/.installed  ## the end-to-end demo on embedded defaults (CPU, no internet)
	$(BIN)/periln demo

test: $(VENV)/.installed  ## lint, import contracts, then the whole test suite (CPU; SLURM tests need root + apt)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# torch is pinned in the same pip command: otherwise pip may pick a multi-GB CUDA build of a newer
# torch (the range in pyproject.toml admits 2.13.0, whose CPU wheel is what CI installs).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 -e '.[dev,hf]'
	touch $@
