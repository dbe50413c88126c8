# The README's quick start: `make run` and `make test`, as root on a fresh Debian machine.
# Each sets up only what is missing: apt packages, the .venv, the Python dependencies.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
APT_PKGS := postfix libmilter-dev openssl
STAMP_RUN  := $(VENV)/.stamp-run
STAMP_TEST := $(VENV)/.stamp-test

.PHONY: run test lint format bench setup-bench setup-python setup-apt setup-run setup-test clean

run: setup-run
	$(VENV)/bin/smtpguard serve

test: setup-test
	$(PY) -m pytest -q

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks print numbers (and the command that made them); they are not timed tests.
# The classifier benchmark decodes the corpus with Debian's Sisimai 4.25 side by side, and
# counts both decoders' instructions under valgrind (the ratio a shared machine's load does
# not move).
BENCH_APT_PKGS := perl libsisimai-perl valgrind

bench: setup-test setup-bench
	$(PY) benchmarks/classify_bench.py --instructions
	$(PY) benchmarks/classify_hostile.py
	$(PY) benchmarks/suppression_bench.py
	$(PY) benchmarks/relay_throughput.py

setup-bench:
	@missing=""; \
	for p in $(BENCH_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(call APT_INSTALL,$$missing); fi

# Debian packages, installed only when missing. "No configuration" leaves the
# system Postfix unconfigured and stopped: tests start their own instances.
APT_INSTALL = echo "apt: installing $(1)"; \
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1)

# Both targets: a python3 that can make a venv (Debian splits venv into python3-venv).
setup-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { $(call APT_INSTALL,python3 python3-venv); }

# Tests also need Postfix and its load tools, libmilter-dev, openssl (test certificates)
# and a C compiler with the Python headers to build pymilter.
setup-apt: setup-python
	@missing=""; \
	for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
		>/dev/null 2>&1 || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then $(call APT_INSTALL,$$missing); fi

$(VENV)/bin/python: | setup-python
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); $(call APT_INSTALL,python3-venv) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[dev,milter]'
	touch $@ $(STAMP_RUN)

setup-run: $(STAMP_RUN)

setup-test: setup-apt $(STAMP_TEST)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
