# polysim — `make demo` and `make test` are all a fresh machine needs (Python >= 3.11, make).

# The first interpreter on PATH that is Python >= 3.11.
PY ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; \
	done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.lock 2>/dev/null | cut -c1-12)

.PHONY: install demo test lint bench lock clean fastbook

install: $(STAMP) fastbook

# The optional compiled feed path (marketdata/_fastbook.c). Without a C compiler the build
# fails, make says so and carries on: the pure-Python path does the same work, slower.
fastbook: $(STAMP)
	@mkdir -p var; $(BIN)/python setup.py --quiet build_ext --inplace >/dev/null 2>var/fastbook-build.log \
		&& rm -f var/fastbook-build.log \
		|| { echo "note: marketdata/_fastbook (the compiled feed path) was not built, the pure-Python path will be used; see var/fastbook-build.log"; true; }

$(STAMP): requirements.lock
	@test -n "$(PY)" || { echo "Python >= 3.11 is required (python3.11+ not found on PATH)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo

# The whole suite (compiled feed path when built), then the market-data tests again on the
# pure-Python path (POLYSIM_FEED_PURE=1), so both paths stay tested.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	POLYSIM_FEED_PURE=1 $(BIN)/python -m pytest $(PYTEST_ARGS) tests/marketdata

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python bench/partner_api.py
	$(BIN)/python bench/feed.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/web_ui.py

# Regenerate the locked, hashed dependency set from pyproject.toml.
lock: install
	$(BIN)/pip-compile --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache build marketdata/_fastbook*.so
