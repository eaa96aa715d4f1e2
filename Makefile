# Two commands on a fresh machine:  `make demo` (main job)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo clean web chromium

$(STAMP): pyproject.toml requirements.txt requirements-ref.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -r requirements-ref.txt
	$(PIP) install --quiet --no-deps -r requirements-nodeps.txt
	$(PIP) install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) chromium
	$(PY) -m pytest -q

# ruff (rules and per-file exceptions in pyproject.toml); `$(VENV)/bin/ruff check --fix` mends the mechanical ones.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Debian's chromium for the browser viewer's Playwright test (skipped, with a message, without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser viewer test will be skipped"

# Rebuild the viewer bundle voxprompt/server/static/viewer.js (committed, so users need no npm; needs node).
web:
	cd web && npm ci --no-audit --no-fund && node build.mjs

demo: $(STAMP)
	$(PY) -m voxprompt.cli.demo

clean:
	rm -rf $(VENV) build *.egg-info
