# verl-mem1 — one virtualenv, two commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch: the CPU build by default. On a CPU-only Linux machine with plain PyPI, point TORCH_INDEX at
# PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu) to avoid a multi-GB CUDA download.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
TORCH_INDEX_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install install-gpu demo test test-fast lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_INDEX_ARGS)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install-gpu: install
	$(BIN)/pip install -e ".[gpu]"

demo: install
	$(BIN)/mem1 demo --out outputs/demo

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
