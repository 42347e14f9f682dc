# The two commands of the README:   make demo   (the main job)   and   make test.
# Each installs what it needs: the venv, the Python packages, and Debian's packages (the data
# set, which the demo and the tests' GPU-check dry run train on; nginx, the server's front;
# openssl and iproute2, which the tests' TLS and network cases use).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
NGINX := /usr/sbin/nginx
# nginx's JavaScript module: the front checks every HTTP inference request with it (server/front_check.js).
NGINX_JS := /usr/lib/nginx/modules/ngx_http_js_module.so
# The security scanner the tests run on deploy/k8s and the Dockerfile, in a venv of its own
# (checkov pins dozens of packages the project's venv must not have to agree with).  Pinned:
# a new checkov adds checks, and a gate should move when we move it.
SCAN_VENV := .venv-scan
CHECKOV := $(SCAN_VENV)/bin/checkov
CHECKOV_VERSION := 3.3.30
# Debian's packages, as root or through sudo.  alexnet-serve runs nginx itself; where the
# package's install starts its own service (on port 80), the nginx target stops and disables it.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq
# A new venv takes 6.4 GiB (torch brings 3.2 GiB of CUDA libraries) plus pip's unpacking room.
# Checked before pip starts, so a full disk is one line here, not pip's OSError half-way through.
INSTALL_MIN_FREE_GIB ?= 9
# The demo's settings (training budget, export, ports) live in scripts/demo.sh; override them
# with its DEMO_* variables, e.g. make demo DEMO_BUDGET_S=0 DEMO_TRAIN_BUDGET_S=0 DEMO_TRAIN_ARGS="--preset demo --epochs 10 --auto-speed".

.PHONY: install test demo fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Python 3.11)"; exit 1; }
	@[ -x $(PY) ] || { free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  [ "$$free" -ge $(INSTALL_MIN_FREE_GIB) ] || { echo "make install: $(VENV) needs about $(INSTALL_MIN_FREE_GIB) GiB free on $$(df -P . | awk 'NR==2 {print $$6}'), which has $$free GiB"; exit 1; }; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned in pyproject.toml: pip takes them from this machine's disk.
	$(PY) -m pip install -q -e '.[train,export,serve,ray,test]'
	touch $(STAMP)

$(FASHION):
	@$(APT_INSTALL) dataset-fashion-mnist

$(NGINX) $(NGINX_JS):
	@$(APT_INSTALL) nginx libnginx-mod-http-js openssl iproute2
	@{ command -v systemctl >/dev/null && systemctl disable --now nginx >/dev/null 2>&1; } || true

$(CHECKOV):
	[ -x $(SCAN_VENV)/bin/python ] || $(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'

test: $(STAMP) $(FASHION) $(NGINX) $(NGINX_JS) $(CHECKOV)
	$(PY) -m pytest

# When make started, before the install: the demo's deadline (DEMO_BUDGET_S) counts from here.
DEMO_STARTED_AT := $(shell date +%s)

demo: $(STAMP) $(FASHION) $(NGINX) $(NGINX_JS)
	DEMO_STARTED_AT=$(DEMO_STARTED_AT) bash scripts/demo.sh

# The long fuzzing run of the front (tests/test_fuzz_front.py with many more cases): counts of
# every kind of answer in fuzz-results/front.json (docs/RESULTS.md).  FUZZ_EXAMPLES: cases per
# HTTP operation and mode (x10 for gRPC); 300 took 5 minutes on a 2-core Zen 3, 1000 about 15.
FUZZ_EXAMPLES ?= 1000
fuzz: $(STAMP) $(NGINX) $(NGINX_JS)
	rm -f fuzz-results/front.json
	ALEXNET_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ALEXNET_FUZZ_REPORT=fuzz-results/front.json $(PY) -m pytest -q tests/test_fuzz_front.py
	@$(PY) -c 'import json; r = json.load(open("fuzz-results/front.json")); [print(k, v["cases"], "cases:", v["answers"], "| Triton RSS growth", v["triton_rss_growth_mib"], "MiB") for k, v in r.items()]'

clean:
	rm -rf $(VENV) $(SCAN_VENV) runs .pytest_cache
