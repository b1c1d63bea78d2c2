# linkcert: the two commands a new user needs are `make demo` and `make test`.
# Both install what they need (scripts/bootstrap.sh) and can be re-run.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT      := $(CURDIR)
PY311     := $(ROOT)/.venv/py311/bin
PY313     := $(ROOT)/.venv/py313/bin
EDGELAB   := $(PY311)/python $(ROOT)/lab/edgelab.py
# The demo lab: an edge test host (Debian 12, systemd, nginx) with Pebble and DNS on its veth;
# every lab port can be overridden from the environment (LINKCERT_LAB_*_PORT, see lab/labctl.py).
export LINKCERT_LAB_DIR       ?= $(ROOT)/.lab
export ANSIBLE_COLLECTIONS_PATH := $(ROOT)/.work/collections
export ANSIBLE_HOME := $(ROOT)/.work/ansible-home

.PHONY: help deps demo lab-start lab-stop lab-status test checks units lab-py311 lab-py313 integration faults molecule lint sanity build bench clean

help:
	@echo "make demo   - install what is needed, start the local lab, onboard the example domains, print the status table"
	@echo "make test   - install what is needed and run the whole suite (unit, integration, ansible-lint, ansible-test sanity, build)"
	@echo "make bench  - one table on a lab edge: onboarding vs certbot and lego, no-op re-run, renewal and DNS at 1,000 domains, protocol floor"
	@echo "make lab-start | lab-stop | lab-status - the local lab alone (ports from LINKCERT_LAB_* variables)"

deps:
	@bash scripts/bootstrap.sh

lab-start: deps
	@$(EDGELAB) start

lab-stop:
	@if [ -x $(PY311)/python ]; then $(EDGELAB) stop; fi

lab-status:
	@$(EDGELAB) status

demo: lab-start
	$(PY311)/ansible-playbook -i inventories/lab playbooks/onboard_domain.yml
	$(PY311)/ansible-playbook -i inventories/lab playbooks/status.yml -e linkcert_status_file=$(LINKCERT_LAB_DIR)/status.json \
	  -e linkcert_status_page=$(LINKCERT_LAB_DIR)/status.html
	@echo
	@echo "Status page (every domain, its state and the record to fix): file://$(LINKCERT_LAB_DIR)/status.html"
	@echo "The lab keeps running (make lab-stop ends it). Try, with PATH=$(PY311):\$$PATH:"
	@echo "  ansible-playbook -i inventories/lab playbooks/onboard_domain.yml -e domain=links.example.net"
	@echo "  ansible-playbook -i inventories/lab playbooks/status.yml"

# The suite: its groups run side by side (scripts/testgroups.py). They share nothing (each starts its own lab on
# free ports, boots its own test hosts), so on two cores they overlap each other's waits (boots, CA validation,
# timers). Each group logs to .work/test-logs/GROUP.log, printed whole when the group ends; a table of the groups'
# results and wall times ends the output, and the exit status says whether any failed.
TEST_GROUPS := checks units molecule-default molecule-trixie molecule-renewal molecule-fleet lab-py311 lab-py313
# pytest-xdist workers per lab group: each worker starts its own lab; the tests of one file that share a booted
# edge or a lab of their own stay on one worker (--dist loadfile).
LAB_WORKERS ?= 3

test: deps
	@$(PY311)/python scripts/testgroups.py $(ROOT)/.work/test-logs $(TEST_GROUPS)

# Static checks, each run even if another failed.
checks:
	@status=0; \
	for step in lint sanity build; do \
	  echo "=== $$step ==="; \
	  $(MAKE) --no-print-directory $$step || { echo "=== $$step FAILED ==="; status=1; }; \
	done; \
	exit $$status

units:
	$(PY311)/python -m pytest tests/unit -q
	$(PY313)/python -m pytest tests/unit -q

# The lab suites of make test: everything on Python 3.11 (ansible-core 2.19), the integration tests again on
# Python 3.13 (newest ansible-core) except the fault suite and the booted-host tests: the roles on booted hosts
# run under the newest ansible-core in the molecule scenarios, and make demo's path (test_onboard_playbook.py,
# one booted edge, the suite's longest file) is the 3.11 venv's, as `make demo` runs it.
lab-py311:
	$(PY311)/python -m pytest tests/lab -q -n $(LAB_WORKERS) --dist loadfile --durations=12

lab-py313:
	$(PY313)/python -m pytest tests/lab -q -m "not faults and not testhost" -n $(LAB_WORKERS) --dist loadfile --durations=12

# Integration tests start their own lab on free ports, so they never touch the demo lab.
integration:
	$(PY311)/python -m pytest tests/lab -q -m "not faults" -n $(LAB_WORKERS) --dist loadfile
	$(PY313)/python -m pytest tests/lab -q -m "not faults" -n $(LAB_WORKERS) --dist loadfile --durations=12

# The fault and abuse suite (tests/lab/test_faults_*.py, marker faults): the CA, DNS, nginx, the disk and
# the process misbehaving, and hostile input; each case asserts status, files and the served certificate.
faults:
	$(PY311)/python -m pytest tests/lab -q -m faults -n $(LAB_WORKERS) --dist loadfile

# Roles on real Debian hosts (systemd as PID 1, booted with systemd-nspawn, reached over SSH): default
# (onboarding, idempotence, check mode, the traffic contract, Mozilla's TLS profile) on Debian 12 and, as trixie,
# the same on Debian 13, whatever this machine runs; renewal (short-lived certificate renewed by the timer) and fleet
# (two edges behind one name, one order per certificate), side by side (each has its own hosts and lab).
MOLECULE_SCENARIOS := default trixie renewal fleet

molecule:
	@$(PY311)/python scripts/testgroups.py $(ROOT)/.work/test-logs/molecule $(addprefix molecule-,$(MOLECULE_SCENARIOS))

molecule-%:
	cd $(ROOT) && PATH=$(PY313):$$PATH molecule test -s $*

lint:
	cd $(ROOT) && PATH=$(PY313):$$PATH ansible-lint --profile production

# ansible-test sanity once, with the newest ansible-core (Python 3.13): its checks are a superset of 2.19's, and the
# modules' Python 3.11 compatibility is proven by the 3.11 unit and lab runs (and the test hosts' Python 3.11).
sanity:
	bash scripts/sanity.sh .venv/py313

build:
	rm -rf .work/build && mkdir -p .work/build
	$(PY313)/ansible-galaxy collection build --output-path .work/build --force
	@if tar -tzf .work/build/mailops-linkcert-*.tar.gz | grep -E '^(tests/(lab|unit|output)/|lab/|bench/|molecule/|scripts/|\.venv|\.work|\.lab|\.ansible/)'; then \
	  echo "test-only files leaked into the build"; exit 1; fi
	@ls -l .work/build

# Benchmarks, never timed tests: one run on a lab edge (onboarding against certbot and lego, the no-op
# re-run, renewal with nothing due, DNS verification, the ACME protocol floor), printed as one table and
# written to bench/results/latest.json; sizes from BENCH_N etc. (bench/README.md). The edge's test host
# root (with certbot, lego and GNU time) is built by lab/edgelab.py when missing or outdated.
bench: deps
	$(PY311)/python bench/edge.py

clean: lab-stop
	rm -rf .work .lab tests/output
