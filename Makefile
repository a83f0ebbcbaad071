# The README's commands. `make demo` and `make test` are the two-command quickstart.
VENV   ?= .venv
PYTHON ?= python3
DW     := $(VENV)/bin/dualwrite

.PHONY: help install chromium demo test check lint typecheck pytest up down status bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

install: $(VENV)/.installed  ## create .venv and install dualwrite with its test extra

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

demo: install  ## the demo migration end to end (starts the local stack if needed, stops it after)
	$(DW) demo $(DEMO_ARGS)

test: install chromium  ## lint, type-check and run the whole suite against real PostgreSQL and Kafka
	$(DW) dev run -- $(MAKE) --no-print-directory check

chromium:  ## Debian's chromium and chromedriver (the HTML report tests open pages in it)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing chromium and chromium-driver with apt-get"; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; }

check: lint typecheck pytest  ## the checks alone (services must already be up and exported)

lint:
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

typecheck:
	$(VENV)/bin/mypy

pytest:
	$(VENV)/bin/pytest $(PYTEST_ARGS)

up: install  ## start PostgreSQL and Kafka
	$(DW) dev up

down:  ## stop what `up` started
	$(DW) dev down

status:  ## show both services
	$(DW) dev status

bench: install  ## run the benchmarks (see bench/README.md)
	$(DW) dev run -- $(VENV)/bin/python bench/ceilings.py

clean:  ## stop the stack and delete its data (keeps the jar cache)
	-$(DW) dev down --wipe
