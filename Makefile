# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-app install clean

$(STAMP): requirements.txt requirements-dev.txt requirements-sam2.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements-dev.txt
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --no-build-isolation -r requirements-sam2.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) app.py $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m deop bench --quick --random-weights --json bench.json --plot bench.png

bench-app: $(STAMP)
	$(PY) -m deop bench-app --app-args="--random-weights $(ARGS)" --json bench-app.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts
