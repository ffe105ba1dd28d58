# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs the
# pinned, known-good stack from constraints.txt first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench bench-scale gpu-check clean

# uv installs the pinned stack (torch with its CUDA libraries: ~4 GB of wheels) much faster than
# pip, downloading in parallel and byte-compiling on every core; this is what keeps a fresh
# `make demo` near two minutes. Byte-compiling at install matters where PYTHONDONTWRITEBYTECODE is
# set: otherwise every run compiles torch's imports again (~40 s). If uv cannot be installed or
# fails (it does not read pip.conf, e.g. a private index), pip installs the same pins.
UV_VERSION ?= 0.13.9
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	( $(PIP) uv==$(UV_VERSION) && \
	  $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) \
	    -c constraints.txt -e ".[dev]" ) || \
	  $(PIP) -c constraints.txt -e ".[dev]"
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
	$(PIP) --no-deps gromo==0.1.0
	$(PY) -m benchmarks

bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale

# On a GPU machine (< 8 min): moments vs float64, bf16, two decisions on the 1/64 ResNet-18.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) .cache lightning_logs
