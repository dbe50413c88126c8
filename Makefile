# The README's quick start: `make run` and `make test`, as root on a fresh Debian machine.
# Each sets up only what is missing: apt packages, the .venv, the Python dependencies.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
APT_PKGS := postfix libmilter-dev openssl redis-server postgresql
STAMP_RUN  := $(VENV)/.stamp-run
STAMP_TEST := $(VENV)/.stamp-test

.PHONY: run test lint format bench setup-bench install uninstall setup-python setup-apt setup-run setup-test clean

# The example config is the embedded defaults (data in ./var), and naming it keeps
# a checkout on a machine with an installed /etc/smtpguard off the installed data.
run: setup-run
	$(VENV)/bin/smtpguard --config conf/smtpguard.toml serve

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
	$(PY) benchmarks/fleet_bench.py
	$(PY) benchmarks/relay_throughput.py
	$(PY) benchmarks/milter_bench.py
	$(PY) benchmarks/logscan_bench.py
	$(PY) benchmarks/smtpclient_bench.py
	$(PY) benchmarks/maillog_bench.py
	$(PY) benchmarks/inbound_memory.py
	$(PY) benchmarks/budget_bench.py

# ---------------------------------------------------------------------------- install
# `make install` (as root): a venv in $(PREFIX) with smtpguard and its dependencies,
# $(BINDIR)/smtpguard linking to it, the systemd units (relay, milter, policy
# service), /etc/smtpguard/smtpguard.toml
# (written once, never overwritten: data_dir = /var/lib/smtpguard), the README and
# Postfix notes the unit's Documentation= names, and the smtpguard system user
# (systemd-sysusers). Installed, `smtpguard ...` reads /etc/smtpguard/smtpguard.toml
# without flags, so the CLI and the relay share one database.
# DESTDIR=/some/root stages everything under that root (for packages and tests):
# no user is created and nothing is chowned; the venv's paths are rewritten so that
# it works once moved to $(PREFIX).
PREFIX      ?= /opt/smtpguard
BINDIR      ?= /usr/local/bin
SYSCONFDIR  ?= /etc/smtpguard
STATEDIR    ?= /var/lib/smtpguard
UNITDIR     ?= /etc/systemd/system
DOCDIR      ?= /usr/share/doc/smtpguard
SYSUSERSDIR ?= /etc/sysusers.d
DESTDIR     ?=
ROOT_VENV   := $(DESTDIR)$(PREFIX)
# EXTRAS=milter also installs pymilter (the milter's unit needs it; it builds against
# libmilter-dev, which `make setup-apt` installs).
EXTRAS      ?=
UNITS       := smtpguard.service smtpguard-milter.service smtpguard-policy.service

install: setup-python
	@$(PYTHON) -c 'import ensurepip' >/dev/null 2>&1 || { $(call APT_INSTALL,python3-venv); }
	$(PYTHON) -m venv $(ROOT_VENV)
	$(ROOT_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-warn-script-location \
		".$(if $(EXTRAS),[$(EXTRAS)])"
	$(ROOT_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-warn-script-location \
		--no-deps --force-reinstall .
	@if [ -n "$(DESTDIR)" ]; then \
		find $(ROOT_VENV)/bin -type f -exec sed -i "s|$(ROOT_VENV)|$(PREFIX)|g" {} + ; \
		sed -i "s|$(ROOT_VENV)|$(PREFIX)|g" $(ROOT_VENV)/pyvenv.cfg; \
	fi
	install -d $(DESTDIR)$(BINDIR)
	ln -sfn $(PREFIX)/bin/smtpguard $(DESTDIR)$(BINDIR)/smtpguard
	install -d $(DESTDIR)$(UNITDIR)
	for unit in $(UNITS); do \
		sed -e "s|/usr/local/bin/smtpguard|$(BINDIR)/smtpguard|" \
			-e "s|/etc/smtpguard/|$(SYSCONFDIR)/|" \
			-e "s|/usr/share/doc/smtpguard/|$(DOCDIR)/|" \
			conf/systemd/$$unit > $(DESTDIR)$(UNITDIR)/$$unit && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit || exit 1; \
	done
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 milter/README.md $(DESTDIR)$(DOCDIR)/milter/README.md
	install -D -m 0644 conf/postfix/README $(DESTDIR)$(DOCDIR)/postfix/README
	install -m 0644 conf/postfix/main.cf.snippet conf/postfix/milter.cf conf/postfix/policy.cf \
		$(DESTDIR)$(DOCDIR)/postfix/
	install -m 0644 conf/smtpguard.toml $(DESTDIR)$(DOCDIR)/smtpguard.toml.example
	install -D -m 0644 conf/systemd/smtpguard.sysusers $(DESTDIR)$(SYSUSERSDIR)/smtpguard.conf
	@if [ -z "$(DESTDIR)" ]; then systemd-sysusers $(SYSUSERSDIR)/smtpguard.conf; fi
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)
	@conf=$(DESTDIR)$(SYSCONFDIR)/smtpguard.toml; \
	if [ -e $$conf ]; then echo "install: kept $$conf"; else \
		$(ROOT_VENV)/bin/python -m smtpguard --config /dev/null --data-dir $(STATEDIR) \
			config example > $$conf.tmp && mv $$conf.tmp $$conf; \
		if [ -z "$(DESTDIR)" ]; then chown root:smtpguard $$conf; chmod 0640 $$conf; \
		else chmod 0644 $$conf; fi; \
		echo "install: wrote $$conf (store.data_dir = $(STATEDIR))"; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
		install -d -o smtpguard -g smtpguard -m 0750 $(STATEDIR); \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		echo "install: next: systemctl enable --now smtpguard (see $(DOCDIR)/postfix/README)"; \
	else install -d -m 0750 $(DESTDIR)$(STATEDIR); fi

# Keeps the configuration and the data (queue, suppression list).
uninstall:
	rm -rf $(DESTDIR)$(PREFIX) $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(BINDIR)/smtpguard $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS)) \
		$(DESTDIR)$(SYSUSERSDIR)/smtpguard.conf
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "uninstall: kept $(SYSCONFDIR) and $(STATEDIR)"

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

# Tests also need Postfix and its load tools, libmilter-dev, openssl (test certificates),
# redis-server (the fleet's shared budgets; tests start their own on a free port),
# PostgreSQL's server binaries (the fleet tests start their own server; the package may
# start a system cluster too, which the tests never use),
# a C compiler with the Python headers to build pymilter, and systemd's tools (the
# install test verifies the unit with systemd-analyze).
setup-apt: setup-python
	@missing=""; \
	for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v gcc >/dev/null 2>&1 || missing="$$missing gcc"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
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
	$(PY) -m pip install -q -e '.[dev,milter,fleet]'
	touch $@ $(STAMP_RUN)

setup-run: $(STAMP_RUN)

setup-test: setup-apt $(STAMP_TEST)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
