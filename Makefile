# tradingd — the two commands are `make run` and `make test`; both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test test-long test-fast lint typecheck bench clean deploy-test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[plots,dask,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/tradingd run $(if $(CONFIG),--config $(CONFIG),)

test: $(STAMP)
	$(BIN)/ruff check daemon tests bench scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The inner loop: the same checks, without the tests marked slow (daemon subprocesses, the
# bundled study, a Dask cluster, wheel builds). `make test` stays the gate.
# The long memory test (the estimator against measured peaks, ~12 min): not part of `make test`.
# (The cgroup squeeze test, ~5 min as root (316 s at load 2-4, 10.5 min at load 6), is: it runs in `make test`.)
test-long: $(STAMP)
	TRADINGD_LONG_TESTS=1 $(BIN)/python -m pytest tests/integration/test_memory_footprint.py

test-fast: $(STAMP)
	$(BIN)/ruff check daemon tests bench scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

# The image under a real Docker engine and the unit under a real systemd (systemd-nspawn --boot),
# as root: installs docker.io/mmdebstrap/systemd-container if missing, starts and stops its own
# dockerd, caches the base image and rootfs in /var/tmp/tradingd-deploy. See docs/operations.md.
deploy-test:
	deploy/test.sh

$(BENCH_STAMP): pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench,dask]'
	@rm -f $(BENCH_VENV)/.installed-* && touch $@

# Benchmarks against peers (vectorbt, cachetools, zstd/lz4/blosc); each writes bench/results/<name>.md.
bench: $(BENCH_STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(BENCH_VENV)/bin/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(BENCH_VENV) var .pytest_cache .mypy_cache .ruff_cache
