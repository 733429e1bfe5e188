# One command to test on a fresh machine: `make test` creates the virtual environment when
# it is missing, installs the project with its test extras, and runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install test test-fast format serve train-default install-default phantom-sheet bench-phantom clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade --quiet "pip>=24"
	$(PY) -m pip install --quiet -e '.[test,gpl-codecs]'
	touch $(STAMP)

install: $(STAMP)

# Lint, format check, then the whole suite (CI runs this). test-fast leaves out the tests marked
# slow (over 5 s each) for a quick loop while editing; `make format` rewrites what the check flags.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Single-machine mode: API + web form + in-process worker on http://127.0.0.1:8000/ (no Redis, no GPU).
serve: $(STAMP)
	$(VENV)/bin/whatif serve $(SERVE_ARGS)

# The embedded default model: the sittings of recipes/phantom-128.toml (phantom-128 on the 2-core
# CPU, about 7 h; run again to continue after an interruption). RUN holds the state outside git.
RUN ?= $(HOME)/whatif-runs/phantom-128
EVAL_N ?= 16
DEFAULT_DIR := model/weights/default
train-default: $(STAMP)
	$(VENV)/bin/whatif train --recipe recipes/phantom-128.toml --out $(RUN)

# Make RUN's checkpoint the embedded default: copy it into the package, score it, write its card.
install-default: $(STAMP)
	rm -rf $(DEFAULT_DIR) && mkdir -p $(DEFAULT_DIR) && cp -r $(RUN)/checkpoint/. $(DEFAULT_DIR)/
	$(VENV)/bin/whatif eval --checkpoint $(DEFAULT_DIR) --n $(EVAL_N) --write-card

# docs/phantom.png: four identities x (no finding + six findings), the layout of Fig. 7.
phantom-sheet: $(STAMP)
	$(VENV)/bin/whatif phantom sheet --out docs/phantom.png

bench-phantom: $(STAMP)
	$(PY) benchmarks/phantom.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
