# tcpcryptd — build, test and demo entry points. Everything a target needs is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.stamp

# What the daemon needs on a host (`make install`), then what the tests, the demo and the
# bench add (building NetfilterQueue for the impairment program, traffic and capture tools).
RUNTIME_PACKAGES := python3-venv iptables nftables iproute2
APT_PACKAGES := $(RUNTIME_PACKAGES) conntrack kmod procps gcc python3-dev libnetfilter-queue-dev libnetfilter-queue1 \
	iperf3 tcpdump tshark ethtool curl netcat-openbsd groff-base linux-perf

.PHONY: setup test test-slow fuzz demo bench bench-engine install uninstall clean vectors lint

setup: $(STAMP)-apt $(STAMP)-venv

# System packages (root, Debian). Re-run only when this Makefile changes.
$(STAMP)-apt: Makefile
	@if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root (installs Debian packages)" >&2; exit 1; fi
	mkdir -p $(VENV)
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	touch $@

# Python virtualenv with the package in editable mode plus test extras.
$(STAMP)-venv: pyproject.toml $(STAMP)-apt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[test,decode]'
	touch $@

test: setup lint
	bash tools/run-tests.sh

# ruff with the rule set of pyproject.toml ([tool.ruff.lint]).
lint: setup
	$(VENV)/bin/ruff check .

test-slow: setup
	bash tools/run-tests.sh --slow

# The fuzz targets of tests/fuzz with the long hypothesis profile (random seeds, about 12
# minutes; TCPCRYPTD_FUZZ_EXAMPLES scales it). `make test` runs them seeded and bounded.
fuzz: setup
	TCPCRYPTD_FUZZ=1 $(PY) -m pytest -p no:cacheprovider --hypothesis-show-statistics tests/fuzz

vectors: setup
	$(PY) tools/make_vectors.py > tests/vectors/tcpcrypt.json

demo: setup
	$(PY) -m testbed.demo

$(STAMP)-bench: pyproject.toml $(STAMP)-venv
	$(PIP) install -q -e '.[test,bench]'
	touch $@

bench: setup $(STAMP)-bench
	$(PY) -m bench $(if $(QUICK),--quick,)

bench-engine: setup
	$(PY) -m bench.packet_costs
	$(PY) -m bench.engine

# System-wide install: a dedicated virtualenv in /opt/tcpcryptd (Debian's python refuses
# `pip install` into the system, PEP 668), the command linked into /usr/local/bin, the
# unit, the default config and the man pages (tcpcryptd(8), tcpcryptd.toml(5)).
PREFIX_VENV ?= /opt/tcpcryptd
MANDIR ?= /usr/local/share/man
install:
	@if [ "$$(id -u)" != 0 ]; then echo "make install: run as root" >&2; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(RUNTIME_PACKAGES)
	test -x $(PREFIX_VENV)/bin/python || $(PYTHON) -m venv $(PREFIX_VENV)
	$(PREFIX_VENV)/bin/pip install -q --upgrade pip
	$(PREFIX_VENV)/bin/pip install -q '.[decode]'
	ln -sf $(PREFIX_VENV)/bin/tcpcryptd /usr/local/bin/tcpcryptd
	install -D -m 0644 systemd/tcpcryptd.service /etc/systemd/system/tcpcryptd.service
	test -e /etc/tcpcryptd/tcpcryptd.toml || install -D -m 0644 conf/tcpcryptd.toml /etc/tcpcryptd/tcpcryptd.toml
	install -D -m 0644 man/tcpcryptd.8 $(MANDIR)/man8/tcpcryptd.8
	install -D -m 0644 man/tcpcryptd.toml.5 $(MANDIR)/man5/tcpcryptd.toml.5
	-mandb -q 2>/dev/null
	-systemctl daemon-reload

# `tcpcryptd disable` keeps the guard table while conntrack or the table's @enc sets still
# record an encrypted connection (they are reset or dropped, never sent in plaintext); it
# says so, and how to remove it.
uninstall:
	-systemctl disable --now tcpcryptd
	-/usr/local/bin/tcpcryptd disable
	-nft list table inet tcpcryptd >/dev/null 2>&1 && echo "make uninstall: the guard table" \
		"'inet tcpcryptd' stays until those connections end; then: nft delete table inet tcpcryptd"
	rm -f /etc/systemd/system/tcpcryptd.service /usr/local/bin/tcpcryptd
	rm -f $(MANDIR)/man8/tcpcryptd.8 $(MANDIR)/man5/tcpcryptd.toml.5
	rm -rf $(PREFIX_VENV)
	-systemctl daemon-reload

clean:
	rm -rf $(VENV) .pytest_cache .coverage htmlcov build *.egg-info
