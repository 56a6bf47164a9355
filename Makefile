# One entry point for users and CI: `make test` and `make demo` bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

# torch is pinned first so that no dependency can pull a different (CUDA) build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# the suite in TEST_JOBS processes (pytest-xdist); TEST_JOBS=0 runs it in this one
TEST_JOBS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_JOBS) tests

demo: $(STAMP)
	$(PY) -m monai_nasscam.demo

bench: $(STAMP)
	$(PY) bench/search_step.py

clean:
	rm -rf $(VENV) build *.egg-info
