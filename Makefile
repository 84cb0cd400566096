# Set-up is part of every target: a fresh clone needs only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# This machine serves exactly these builds of PyTorch from local disk.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo clean

install: $(STAMP)

# The recipe is part of what is installed: a change to setup.cfg, pyproject.toml or this file installs again.
$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,nudity,fid]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python -m salun_lightning.demo

clean:
	rm -rf $(VENV) *.egg-info runs lightning_logs .pytest_cache
