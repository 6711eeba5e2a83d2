# The two commands of the README: `make demo` (the Trifeatures pipeline end to end) and `make test`.
# Each creates .venv if it is missing and installs what it needs, torch first (held by constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.infmask-installed
PRESET ?= demo
# the demo preset's table: one seed, unbiased data (what it can show; see preset_notes in its config)
DEMO_ARGS ?= --seeds 42 data.biased=False
export WANDB_MODE ?= offline

.PHONY: install demo test test-all notebooks bench clean-workspace

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg constraints.txt pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0 -c constraints.txt
	$(PIP) install -q -c constraints.txt -e ".[dev,notebooks,gpu,clip]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/infmask run trifeatures --preset $(PRESET) $(if $(filter demo,$(PRESET)),$(DEMO_ARGS))

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

notebooks: install
	$(VENV)/bin/infmask notebooks

bench: install
	$(VENV)/bin/infmask bench trifeatures --method infmasking --preset paper --steps 5

clean-workspace:
	rm -rf workspace
