# lipcheck developer tasks. `make install` creates .venv; every other target uses it.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP = $(VENV)/bin/pip
PY = $(VENV)/bin/python
STAMP = $(VENV)/.installed

.PHONY: install test lint demo models docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check "$(TORCH)"
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: install
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n 2 tests

# ruff (lint + import order) and mypy on lipcheck/, configured in pyproject.toml
lint: install
	$(VENV)/bin/ruff check lipcheck tests bench
	$(VENV)/bin/mypy

demo: install
	$(VENV)/bin/lipcheck estimate models/digits_cnn.onnx

models: install
	OMP_NUM_THREADS=1 $(PY) models/make_models.py

docs: install
	$(PY) -m lipcheck.docs docs/operators.md

bench: install
	OMP_NUM_THREADS=1 $(PY) bench/bench_estimate.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
