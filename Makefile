# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Long proof tests (crash loops, soak, Prefect end-to-end) are marked slow; .ci/run includes them.
MARKERS ?= not slow
# Test files run side by side, one per core (pytest-xdist); TEST_WORKERS=0 runs them in turn.
TEST_WORKERS ?= auto
PYTEST_ARGS ?=

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mailsync demo

test: $(STAMP)
	@scripts/ensure-chromium
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "$(MARKERS)" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(MAKE) test MARKERS=""

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) reports mailsync.db mailsync.db-wal mailsync.db-shm mailsync.db-migrate.lock .pytest_cache
