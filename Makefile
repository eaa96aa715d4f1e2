# Two commands on a fresh machine:  `make demo` (main job)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
NAPARI := $(VENV)/.napari

.PHONY: install test lint demo clean web chromium napari-libs

$(STAMP): pyproject.toml requirements.txt requirements-ref.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -r requirements-ref.txt
	$(PIP) install --quiet --no-deps -r requirements-nodeps.txt
	$(PIP) install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The napari plugin's extra (voxprompt[napari]: napari and PyQt6, about 500 MB), for tests/test_napari.py;
# `make demo` does without it.
$(NAPARI): $(STAMP) requirements-napari.txt
	$(PIP) install --quiet -r requirements-napari.txt -c requirements.txt
	touch $(NAPARI)

test: $(STAMP) $(NAPARI) chromium napari-libs
	$(PY) -m pytest -q

# ruff (rules and per-file exceptions in pyproject.toml); `$(VENV)/bin/ruff check --fix` mends the mechanical ones.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Debian's chromium for the browser viewer's Playwright test (skipped, with a message, without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser viewer test will be skipped"

# Debian's libraries for Qt (napari's widgets, offscreen) and Xvfb with software OpenGL for the napari
# window test (tests/test_napari.py skips, with a message, what cannot run without them).
NAPARI_APT := xvfb libgl1 libegl1 libopengl0 libglx-mesa0 libgl1-mesa-dri libfontconfig1 fonts-dejavu-core \
	libglib2.0-0 libxkbcommon0 libxkbcommon-x11-0 libx11-xcb1 libxcb-cursor0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-glx0
napari-libs:
	@dpkg -s $(NAPARI_APT) >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(NAPARI_APT) >/dev/null; } \
		|| echo "Qt's and Xvfb's libraries could not be installed: tests/test_napari.py may skip its Qt tests"

# Rebuild the viewer bundle voxprompt/server/static/viewer.js (committed, so users need no npm; needs node).
web:
	cd web && npm ci --no-audit --no-fund && node build.mjs

demo: $(STAMP)
	$(PY) -m voxprompt.cli.demo

clean:
	rm -rf $(VENV) build *.egg-info
