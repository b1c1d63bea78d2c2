# linkcert: the two commands a new user needs are `make demo` and `make test`.
# Both install what they need (scripts/bootstrap.sh) and can be re-run.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT      := $(CURDIR)
PY311     := $(ROOT)/.venv/py311/bin
PY313     := $(ROOT)/.venv/py313/bin
LABCTL    := $(PY311)/python $(ROOT)/lab/labctl.py
# The demo lab listens where the README says; every port can be overridden from the environment.
export LINKCERT_LAB_DIR       ?= $(ROOT)/.lab
export LINKCERT_LAB_HTTP_PORT ?= 80
export ANSIBLE_COLLECTIONS_PATH := $(ROOT)/.work/collections
export ANSIBLE_HOME := $(ROOT)/.work/ansible-home

.PHONY: help deps demo lab-start lab-stop lab-status test units integration molecule lint sanity build bench clean

help:
	@echo "make demo   - install what is needed, start the local lab, onboard the example domains, print the status table"
	@echo "make test   - install what is needed and run the whole suite (unit, integration, ansible-lint, ansible-test sanity, build)"
	@echo "make bench  - benchmarks on the lab (ACME protocol time per certificate against a bare acme client)"
	@echo "make lab-start | lab-stop | lab-status - the local lab alone (ports from LINKCERT_LAB_* variables)"

deps:
	@bash scripts/bootstrap.sh

lab-start: deps
	@$(LABCTL) start
	@$(LABCTL) seed lab/demo-dns.yml

lab-stop:
	@if [ -x $(PY311)/python ]; then $(LABCTL) stop; fi

lab-status:
	@$(LABCTL) status

demo: lab-start
	@set -a; source $(LINKCERT_LAB_DIR)/lab.env; set +a; \
	  $(PY311)/ansible-playbook -i inventories/lab playbooks/onboard_domain.yml
	@echo
	@echo "The lab keeps running (make lab-stop ends it). Try: ansible-playbook -i inventories/lab playbooks/onboard_domain.yml -e domain=links.example.net"

# The suite: every step runs (pytest last, so its closing line ends the output);
# the exit status says whether any step failed.
test: deps
	@status=0; \
	for step in lint sanity build molecule units integration; do \
	  echo "=== $$step ==="; \
	  $(MAKE) --no-print-directory $$step || { echo "=== $$step FAILED ==="; status=1; }; \
	done; \
	exit $$status

units:
	$(PY311)/python -m pytest tests/unit -q
	$(PY313)/python -m pytest tests/unit -q

# Integration tests start their own lab on free ports, so they never touch the demo lab.
integration:
	$(PY311)/python -m pytest tests/lab -q
	$(PY313)/python -m pytest tests/lab -q

# Roles on a real Debian 12 host (systemd as PID 1, booted with systemd-nspawn, reached over SSH).
molecule:
	cd $(ROOT) && PATH=$(PY313):$$PATH molecule test -s default

lint:
	cd $(ROOT) && PATH=$(PY313):$$PATH ansible-lint --profile production

sanity:
	bash scripts/sanity.sh .venv/py311
	bash scripts/sanity.sh .venv/py313

build:
	rm -rf .work/build && mkdir -p .work/build
	$(PY313)/ansible-galaxy collection build --output-path .work/build --force
	@if tar -tzf .work/build/mailops-linkcert-*.tar.gz | grep -E '^(tests/(lab|unit|output)/|lab/|bench/|molecule/|scripts/|\.venv|\.work|\.lab)'; then \
	  echo "test-only files leaked into the build"; exit 1; fi
	@ls -l .work/build

# Benchmarks, never timed tests: per-certificate protocol time against a bare acme-library client.
bench: deps
	$(PY311)/python bench/acme_protocol.py --count $${BENCH_COUNT:-20} --json .work/bench-acme.json

clean: lab-stop
	rm -rf .work .lab tests/output
