# Two entry points: `make demo` (install everything, run the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-all install install-test data torch bench-gpu clean

demo: install data
	$(VENV)/bin/selfsup demo

test: install-test data
	$(PY) -m pytest -q -m "not slow"

test-all: install-test data
	$(PY) -m pytest -q

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

torch: $(PY)
	@scripts/install-torch.sh $(PY)

install: torch
	$(PY) -m pip install -q -e .

install-test: torch
	$(PY) -m pip install -q -e '.[test]'

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt exists; elsewhere point
# --data-dir or SELFSUP_DATA at a folder holding the four IDX files.
data:
	@scripts/install-data.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
