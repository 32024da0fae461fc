# lbproxy: every target bootstraps .venv from nothing, so `make demo` and `make test`
# work on a fresh machine (Python 3.11+, a C compiler, root for apt-get).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NATIVE := $(VENV)/.native
# What the compiled modules are built from: the twins' .pyx and C headers in csrc/, every
# .pxd, and the one-source Python modules (those with a "# cython:" header).
PYX    := $(wildcard csrc/*.pyx csrc/*.h csrc/*.c) $(shell find lbproxy -name '*.pxd') \
          $(shell grep -rl --include='*.py' '^\# cython:' lbproxy)
# Debian packages the tests and benchmarks drive as peers and load generators.
DEBS   := haproxy nginx-light wrk curl

.PHONY: all venv build native sysdeps demo test bench bench-quick lint typecheck docs debug clean

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "Cython>=3.0.10,<3.4"
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# Rebuild the extensions in place whenever a Cython/C source changes.
$(NATIVE): $(STAMP) $(PYX) setup.py
	$(PY) setup.py -q build_ext --inplace
	touch $(NATIVE)

venv: $(STAMP)
build native: $(NATIVE)

sysdeps:
	@missing=""; \
	for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: build
	$(VENV)/bin/lbproxy demo

# ruff and mypy (lbproxy, tests, bench) first, so CI enforces them; then the whole suite on
# the compiled core, and again on the pure-Python twins (LBPROXY_NO_EXTENSIONS=1): the
# twins are the reference the native code must match.
test: build sysdeps lint
	$(PY) -m pytest -q
	LBPROXY_NO_EXTENSIONS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow"


# Selector and control-plane micro-benchmarks, then the proxy comparison; both write under
# bench/results/ (the micro-benchmarks' raw JSON in raw/, not committed). Under 10 minutes.
bench: build sysdeps
	@mkdir -p bench/results/raw
	$(PY) -m pytest bench/test_selector_bench.py bench/test_control_bench.py -p no:cacheprovider \
	  --benchmark-only --benchmark-enable --benchmark-columns=min,median,mean,ops \
	  --benchmark-json=bench/results/raw/micro_bench.json -q -o addopts=""
	$(PY) -m bench run --all

# A tenth of the length, one repeat: a smoke test (also run by tests/test_bench_smoke.py).
bench-quick: build sysdeps
	$(PY) -m bench run --all --quick --out /tmp/lbproxy-bench-quick

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# docs/configuration.md is generated from the config schema and its field comments;
# tests/test_docs_config.py fails while the committed page differs from this output.
docs: venv
	$(PY) -m lbproxy.control.configdoc -o docs/configuration.md

# Cython line tracing + annotated HTML in build/cython, for py-spy/perf/cProfile work.
debug: $(STAMP)
	LBPROXY_DEBUG_BUILD=1 $(PY) setup.py build_ext --inplace --force

clean:
	rm -rf build dist *.egg-info $(NATIVE)
	find lbproxy -name "*.so" -delete
