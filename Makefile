# Everything a fresh machine needs, from the package registries only.
# TORCH: the PyTorch requirement installed first. torch==2.13.0 is a CPU build on machines whose
# pip is pointed at one (as on our CI); from PyPI on Linux it is the CUDA build a GPU user wants.
# Override for another platform, e.g. `make setup TORCH="torch==2.13.0 --index-url ..."`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo lint test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,ray,tensorboard]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/imgprep demo --out demo-out

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_prepare.py

clean:
	rm -rf demo-out bench-out .pytest_cache
