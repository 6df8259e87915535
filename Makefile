# The two commands in README.md are `make demo` and `make test`; both do all the set-up
# a fresh Debian machine needs (system packages, virtualenv, Kafka jars) first, and skip
# whatever is already done.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fraudstream-installed

.PHONY: setup system test unit integration lint format bench demo schemas clean

setup: $(STAMP)

system:
	bash .ci/system-packages

$(STAMP): pyproject.toml
	bash .ci/system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is the big one (a CUDA build from PyPI; it runs on the CPU): one step.
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/fraudstream devstack fetch
	touch $(STAMP)

test: setup lint
	$(BIN)/python -m pytest -q -ra

unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

integration: setup
	$(BIN)/python -m pytest -q -m integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/fraudstream schemas --check

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m benchmarks.run

demo: setup
	$(BIN)/fraudstream demo

schemas: setup
	$(BIN)/fraudstream schemas

clean:
	-$(BIN)/fraudstream devstack down
	rm -rf .devstack .mypy_cache .ruff_cache .pytest_cache
