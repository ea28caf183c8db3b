# s3pipefs: make venv | deps | test | demo | bench | clean
# Works from a clean clone on Debian 12 as root (deps uses sudo otherwise). Idempotent.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
# Rebuilt when pyproject.toml changes; its presence means `pip install -e .[dev]` succeeded.
STAMP := $(VENV)/.s3pipefs-dev
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Runtime of the FUSE layer: fusermount3 and libfuse 3, plus libfuse 2 as a fallback.
# rsync, gzip, tar, vim, sqlite3 and borgbackup are used by the filesystem tests (real
# tools, as users run them);
# man-db and groff-base render the manual pages and systemd's systemd-analyze checks the
# example units (tests/test_packaging.py); zsh and fish run the completion scripts
# (tests/test_completion.py; bash is always there); vim, sqlite3 and borgbackup are run on
# the mount (tests/test_fs_posix.py).
DEB_PKGS := fuse3 libfuse3-3 libfuse2 rsync gzip tar zip unzip zstd vim sqlite3 borgbackup man-db groff-base systemd zsh fish

.PHONY: venv deps test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "venv: no python3 found" >&2; exit 1; fi
	@if [ ! -x $(VPY) ]; then \
	    echo "venv: $(PYTHON) -m venv $(VENV)"; \
	    $(PYTHON) -m venv $(VENV) || { echo "venv: failed; on Debian: apt-get install python3-venv" >&2; exit 1; }; \
	fi
	$(VPY) -m pip install -q -e '.[dev]'
	@touch $@

deps:
	@missing=""; \
	for p in $(DEB_PKGS) $$($(PYTHON) -c 'import ensurepip' 2>/dev/null || echo python3-venv); do \
	    dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "deps: apt-get install$$missing"; \
	    $(SUDO) apt-get update -qq; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@[ -c /dev/fuse ] || $(SUDO) modprobe fuse 2>/dev/null || true
	@[ -c /dev/fuse ] || { echo "deps: /dev/fuse is missing: load the fuse module (modprobe fuse), or give the container --device /dev/fuse --cap-add SYS_ADMIN" >&2; exit 1; }

# Failing, never skipping, when FUSE or the S3 server cannot start is the tests' job
# (tests/conftest.py, tests/fs_fixtures.py).
test: deps venv
	$(VPY) -m pytest -q -p no:cacheprovider tests

demo: deps venv
	PYTHON=$(abspath $(VPY)) packaging/demo.sh

# Options of bench/run.py, e.g. make bench BENCH_ARGS='--only tree,wan --tree-files 1000'
BENCH_ARGS ?=
bench: $(VENV)/.s3pipefs-bench
	$(VPY) bench/run.py $(BENCH_ARGS)

$(VENV)/.s3pipefs-bench: $(STAMP)
	$(VPY) -m pip install -q -e '.[bench]'
	@touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .demo bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
