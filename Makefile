# verl-mem1 — one virtualenv, two commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch: the CPU build by default. On a CPU-only Linux machine with plain PyPI, point TORCH_INDEX at
# PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu) to avoid a multi-GB CUDA download.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
TORCH_INDEX_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install install-gpu demo learn test test-fast lint format clean

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

# SmolLM2 learns on 2 CPU cores (~2.5 h): SFT on oracle trajectories, GRPO (recipes/smol_qa.yaml) with the learning
# curve, then MEM1 vs full context at 1-8 objectives; results under outputs/learn (benchmarks/README.md, "Learning")
learn: install
	bash benchmarks/learn_smollm2.sh

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# The quick tier: lint, then everything but the long end-to-end runs (@pytest.mark.e2e) and the GPU tests.
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -m "not e2e and not gpu"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

# MEM1 QA training with verl (GPU machines; `make install-gpu` first, retrieval server at mem1.retriever_url up):
# compose 2-objective tasks as verl parquet, then run verl's own trainer on recipes/qa.yaml (see recipes/README.md).
# The bundled HotpotQA sample makes a smoke run; pass the full sets for a real one, e.g.
# QA_SOURCES="--source hotpotqa:hotpot_train_v1.1.json --source nq:NQ-open.train.jsonl --mix-sources".
QA_SOURCES ?= --source hotpotqa-train
QA_OBJECTIVES ?= 2
QA_DATA ?= data/qa
TRAIN_ARGS ?=

.PHONY: train-qa
train-qa: install
	$(BIN)/mem1 compose $(QA_SOURCES) --objectives $(QA_OBJECTIVES) --seed 0 --agent-name mem1_agent \
		--out $(QA_DATA)/train.parquet --test-out $(QA_DATA)/test.parquet
	$(BIN)/python -m verl.trainer.main_ppo --config-path $(CURDIR)/recipes --config-name qa \
		data.train_files=$(abspath $(QA_DATA))/train.parquet data.val_files=$(abspath $(QA_DATA))/test.parquet \
		actor_rollout_ref.rollout.agent.agent_loop_config_path=$(CURDIR)/recipes/agent_loops.yaml $(TRAIN_ARGS)
