# `make demo` and `make test` bootstrap .venv on a fresh machine (offline apart from PyPI).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Exact versions for this build machine; pyproject.toml declares the ranges a user can live with.
PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PINS)
	$(PY) -m pip install -q -e '.[test]' $(PINS)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m quantsim.simulate --out runs/demo

test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: venv
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/speed.py

clean:
	rm -rf $(VENV) runs
