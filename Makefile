# verl-mem1 — one virtualenv, two commands: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch: the CPU build by default. On a CPU-only Linux machine with plain PyPI, point TORCH_INDEX at
# PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu) to avoid a multi-GB CUDA download.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
TORCH_INDEX_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install install-gpu browser demo learn test test-fast lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_INDEX_ARGS)
	$(BIN)/pip install --quiet -e ".[test,webshop]"
	touch $@

# The GPU stack as verl 0.9.1's `vllm` extra pins it (torch, vLLM, transformers; checked by
# tests/test_packaging_on_cpu.py): this replaces the CPU torch build. torch 2.11.0 from PyPI is a CUDA 13.0 build
# (NVIDIA driver >= 580; `make gpu-check` names a mismatch). Then flash-attn, built against that torch without build
# isolation (pip's isolated build has no torch), and one faiss: faiss-cpu (a base dependency) and faiss-gpu-cu12 both
# install the `faiss` package, and faiss-cpu's module would be the one imported.
FLASH_ATTN_VERSION ?= 2.8.3
install-gpu: $(VENV)/.installed-gpu

$(VENV)/.installed-gpu: $(VENV)/.installed
	$(BIN)/pip install -e ".[gpu]"
	$(BIN)/pip install --no-build-isolation "flash-attn==$(FLASH_ATTN_VERSION)"
	$(BIN)/pip uninstall -y faiss-cpu
	$(BIN)/pip install --force-reinstall --no-deps faiss-gpu-cu12
	$(BIN)/python -c "import faiss; assert hasattr(faiss, 'StandardGpuResources'), 'the faiss imported is not faiss-gpu'"
	touch $@

demo: install
	$(BIN)/mem1 demo --out outputs/demo

# SmolLM2 learns on 2 CPU cores (1 h 50 min on a 2-core Xeon): SFT on 1-3-objective oracle episodes, 5 steps of GRPO on verl's own trainer (python -m
# verl_mem1.train --config-name qa +experiment=smol_qa), the SFT and RL checkpoints paired on 300 held-out tasks, then
# MEM1 vs full context at 1-8 objectives; results under outputs/learn (benchmarks/README.md, "Learning on verl's
# trainer"). RL_STEPS=N, RL_ARGS="key=value ...", SFT_STEPS=N size it (benchmarks/learn_smollm2.sh).
learn: install
	bash benchmarks/learn_smollm2.sh

# Tests run in TEST_WORKERS processes (pytest-xdist), a test file to a worker (its module fixtures built once): many
# tests wait on subprocesses and servers, so two workers keep two cores busy. The 15 slowest are printed every run.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

# Debian's Chromium and ChromeDriver, for the episode viewer's tests in a real browser (tests/viewer): installed when
# missing on a Debian machine run as root (CI's); elsewhere those tests skip, except under CI=true, where they fail.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "no chromedriver, and no root apt-get to install it: the browser tests will skip"; fi; }

test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST)

# The quick tier: lint, then everything but the long end-to-end runs (@pytest.mark.e2e) and the GPU tests.
test-fast: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not e2e and not gpu"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

# MEM1 training with verl (GPU machines; `make install-gpu` first, the environment server up): compose the tasks as
# verl parquet, then `python -m verl_mem1.train` (start-up checks, then verl's own main_ppo) on recipes/qa.yaml or
# recipes/webshop.yaml (see recipes/README.md). The bundled HotpotQA sample / WebShop subset make a smoke run; pass
# the full sets for a real one, e.g.
# QA_SOURCES="--source hotpotqa:hotpot_train_v1.1.json --source nq:NQ-open.train.jsonl --mix-sources", or
# WEBSHOP_DATA_ARGS="--products items_shuffle_1000.json --attributes items_ins_v2_1000.json" (the server's files).
QA_SOURCES ?= --source hotpotqa-train
QA_OBJECTIVES ?= 2
QA_DATA ?= data/qa
WEBSHOP_DATA ?= data/webshop
WEBSHOP_DATA_ARGS ?=
# goals 0-499 are WebShop's test split; with its human goals (--human-goals) its train split is 1500: (500-1499 val)
WEBSHOP_TRAIN_GOALS ?= 500:
TRAIN_ARGS ?=
# PLATFORM=cpu: verl's same trainer without a GPU or vLLM (recipes/platform/cpu.yaml: the CPU platform, the mem1_hf
# rollout, FSDP2 on gloo, 2 steps) on SmolLM2-135M (`mem1 model smollm2`), e.g. `make train-qa PLATFORM=cpu`
PLATFORM ?= gpu
CPU_MODEL ?= outputs/models/smollm2
ifeq ($(PLATFORM),cpu)
TRAIN_DEPS := install $(CPU_MODEL)/config.json
PLATFORM_ARGS := +platform=cpu actor_rollout_ref.model.path=$(abspath $(CPU_MODEL))
VERL_ENV := VERL_PLATFORM=cpu
else
TRAIN_DEPS := install-gpu
endif
# `$(call verl_train,RECIPE)` then the overrides: Hydra's parser takes its options first and every override after them
verl_train = $(VERL_ENV) $(BIN)/python -m verl_mem1.train --config-dir $(CURDIR)/recipes --config-name $(1) \
	actor_rollout_ref.rollout.agent.agent_loop_config_path=$(CURDIR)/recipes/agent_loops.yaml $(PLATFORM_ARGS)

$(CPU_MODEL)/config.json: | install
	$(BIN)/mem1 model smollm2 --out $(CPU_MODEL)

# One prepared script for a single GPU machine (torch + CUDA, transformers, triton; no vLLM, flash-attn, Ray or
# internet), under 10 minutes: CUDA tests, MEM1 parity fp32, Qwen2.5-7B layer shapes in bf16, FSDP2 + bf16 +
# checkpointing as verl's engine runs the policy, flash varlen (flash-attn
# or PyTorch's varlen_attn), packing on the GPU; JSON in outputs/gpu_check.json. Runs with the machine's Python and
# the source tree (no install). GPU_CHECK_ARGS=--dry runs the CPU part anywhere (CI does, in the tests).
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

.PHONY: train-qa train-webshop
train-qa: $(TRAIN_DEPS)
	$(BIN)/mem1 compose $(QA_SOURCES) --objectives $(QA_OBJECTIVES) --seed 0 --agent-name mem1_agent \
		--out $(QA_DATA)/train.parquet --test-out $(QA_DATA)/test.parquet
	$(call verl_train,qa) \
		data.train_files=$(abspath $(QA_DATA))/train.parquet data.val_files=$(abspath $(QA_DATA))/test.parquet $(TRAIN_ARGS)

# the WebShop server (`mem1 serve webshop`) must serve the same products, attributes, goals and seed
train-webshop: $(TRAIN_DEPS)
	$(BIN)/mem1 webshop-tasks $(WEBSHOP_DATA_ARGS) --goals $(WEBSHOP_TRAIN_GOALS) --split train --agent-name mem1_agent \
		--out $(WEBSHOP_DATA)/train.parquet
	$(BIN)/mem1 webshop-tasks $(WEBSHOP_DATA_ARGS) --goals 0:500 --split test --agent-name mem1_agent \
		--out $(WEBSHOP_DATA)/test.parquet
	$(call verl_train,webshop) \
		data.train_files=$(abspath $(WEBSHOP_DATA))/train.parquet data.val_files=$(abspath $(WEBSHOP_DATA))/test.parquet \
		$(TRAIN_ARGS)
