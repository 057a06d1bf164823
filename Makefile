# Two commands on a fresh machine: `make demo` and `make test`.
# Everything they need (virtualenv, packages, the HAPI FHIR server) is built here on demand.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= test,browser
STAMP := $(VENV)/.installed-$(EXTRAS)-$(shell cat setup.py | sha1sum | cut -c1-10)
PYTEST_ARGS ?=

.PHONY: venv hapi-build hapi-start hapi-stop hapi-status hfs-build hfs-start hfs-stop hfs-status \
	test test-hfs test-fast test-deprecations lint demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

hapi-build: venv
	$(PY) -m tests.hapi build

hapi-start: venv
	$(PY) -m tests.hapi start

hapi-stop: venv
	$(PY) -m tests.hapi stop

hapi-status: venv
	$(PY) -m tests.hapi status

# The second server (tests/hfs): Helios FHIR Server built by cargo into ~/.cache (once per
# machine, 20-35 minutes on 2 cores), served under /fhir by nginx.
hfs-build: venv
	$(PY) -m tests.hfs build

hfs-start: venv
	$(PY) -m tests.hfs start

hfs-stop: venv
	$(PY) -m tests.hfs stop

hfs-status: venv
	$(PY) -m tests.hfs status

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

# The test session starts the local HAPI (unless FHIR_BASE_URL names a server, or one already
# answers) and stops it at the end.
test: venv hapi-build
	$(PY) -m pytest $(PYTEST_ARGS)

# The server suite against Helios (built first if it is not in the cache; started and stopped
# for you). What differs from HAPI, and why, is in INTEROP.md.
test-hfs: venv
	FHIR_TEST_SERVER=hfs $(PY) -m pytest -m server $(PYTEST_ARGS)

# Everything that needs no FHIR server and no Java (pure logic, the fake connection): seconds.
test-fast: venv
	$(PY) -m pytest -m "not server and not slow" $(PYTEST_ARGS)

# The fast suite on Django 5.2 with RemovedInDjango60Warning and RemovedInDjango61Warning as
# errors (tox.ini: py311-django52-deprecations), in a tox env of its own.
test-deprecations: venv
	$(PY) -m tox -e py311-django52-deprecations $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

demo: venv hapi-build
	$(PY) example_project/demo.py

# benchmarks/run.py starts the local HAPI on PostgreSQL (HAPI_DB=postgres: a private cluster of
# the machine's PostgreSQL server under .hapi/), unless HAPI_DB or FHIR_BASE_URL says otherwise.
bench: venv hapi-build
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hapi .hfs tests/hapi/target
