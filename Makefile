# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs the
# pinned, known-good stack from constraints.txt first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench bench-scale gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lightning_grow fit --config configs/digits_mlp.yaml

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gromo==0.1.0
	$(PY) -m benchmarks

bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale

# On a GPU machine (< 8 min): moments vs float64, bf16, two decisions on the 1/64 ResNet-18.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) .cache lightning_logs
