# polysim — `make demo` and `make test` are all a fresh machine needs (Python >= 3.11, make).

# The first interpreter on PATH that is Python >= 3.11.
PY ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; \
	done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.lock 2>/dev/null | cut -c1-12)

.PHONY: install demo test stop lint bench lock clean

install: $(STAMP)

$(STAMP): requirements.lock
	@test -n "$(PY)" || { echo "Python >= 3.11 is required (python3.11+ not found on PATH)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	@rm -f $(VENV)/.installed-*
	@touch $@

# Every target runs on the embedded PostgreSQL and Redis under var/ (started on first use,
# left running for the next command) unless DATABASE_URL / REDIS_URL are set.
PORT ?= 8000
demo: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo --port $(PORT)

# The whole suite, once.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Stop the embedded servers (their data stays under var/; `rm -rf var/postgres var/redis`
# after this resets it).
stop:
	@if test -x $(BIN)/python; then $(BIN)/python -m config.embedded stop; fi

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
	$(BIN)/python bench/wire_shapes.py

# Regenerate the locked, hashed dependency set from pyproject.toml.
lock: install
	$(BIN)/pip-compile --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

clean:
	@if test -x $(BIN)/python; then $(BIN)/python -m config.embedded stop; fi
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache build
