# The two set-up commands of the README. Both install everything the project needs into the
# current Python environment (use a virtualenv if you prefer) and then run.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install install-test demo test bench

install:
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -e ".[test]"

demo: install
	adapmtl train --preset demo --out runs/demo --force

test: install-test
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) benchmarks/step_overhead.py
