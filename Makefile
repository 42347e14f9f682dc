# The two commands of the README:   make demo   (the main job)   and   make test.
# Each installs what it needs: the venv, the Python packages, and Debian's data set.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# The demo's settings (training budget, export, ports) live in scripts/demo.sh; override them
# with its DEMO_* variables, e.g. make demo DEMO_TRAIN_ARGS="--preset demo --epochs 10 --amp --compile".

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Python 3.11)"; exit 1; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned in pyproject.toml: pip takes them from this machine's disk.
	$(PY) -m pip install -q -e '.[train,export,serve,test]'
	touch $(STAMP)

$(FASHION):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP) $(FASHION)
	bash scripts/demo.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
