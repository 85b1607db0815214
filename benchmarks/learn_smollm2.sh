#!/usr/bin/env bash
# MEM1 learning on 2 CPU cores with SmolLM2-135M-Instruct (`make learn`): SFT on 1-3-objective oracle episodes, GRPO
# with verl's own trainer (`python -m verl_mem1.train --config-name qa +experiment=smol_qa`: main_ppo, the CPU
# platform), then the SFT and RL checkpoints on the same held-out 2-objective tasks (greedy, paired), and the RL
# checkpoint at 1, 2, 4 and 8 objectives with the mem1 and full context policies. Every step is a `mem1` command or
# verl's trainer; numbers in benchmarks/README.md ("Learning on verl's trainer"). Steps already done are skipped.
#
# The comparison is decided before the run: 300 held-out 2-objective tasks (each of the 300 dev questions in 2 tasks),
# `mem1 compare` of the SFT and the final RL checkpoint (no best-of-checkpoints). RL_ARGS adds trainer overrides.
set -euo pipefail
OUT=${OUT:-outputs/learn}
BIN=${BIN:-.venv/bin}
MEM1=${MEM1:-$BIN/mem1}
PORT=${PORT:-8011}
SFT_STEPS=${SFT_STEPS:-24}
RL_STEPS=${RL_STEPS:-5}
RL_ARGS=${RL_ARGS:-}
SWEEP_TASKS=${SWEEP_TASKS:-16}
URL="http://127.0.0.1:$PORT"
EVAL="--retriever $URL --temperature 0 --max-new-tokens 96 --concurrency 32 --max-batch-size 32"
mkdir -p "$OUT/data"
stamp() { echo "[$(date +%T)] $*"; }

stamp "model, corpus, index"
$MEM1 model smollm2 --out "$OUT/smollm2"
[ -f "$OUT/index-bm25/meta.json" ] || {
  $MEM1 corpus hotpotqa --out "$OUT/corpus.jsonl"
  $MEM1 index build --corpus "$OUT/corpus.jsonl" --out "$OUT/index-bm25" --encoder bm25 --quiet
}
$MEM1 serve retrieval --index "$OUT/index-bm25" --port "$PORT" --no-access-log &
SERVER=$!
trap 'kill $SERVER' EXIT
for _ in $(seq 60); do curl -sf "$URL/health" >/dev/null && break; sleep 1; done

# tasks: every prompt states the turn budget (a search per question, the answer, one spare), in SFT, RL and
# evaluation alike. SFT sees 1-, 2- and 3-objective oracle episodes (on 2-objective ones alone SmolLM2 wrote a second
# question into every 1-objective state); RL trains on 2-objective tasks, as the paper does.
for N in 1 2 3; do
  $MEM1 compose --source hotpotqa-train --objectives "$N" --passes $((N == 1 ? 1 : 2)) --seed "$N" --max-turns $((N + 2)) \
    --agent-name mem1_agent --out "$OUT/data/train-${N}obj.parquet"
done
$MEM1 compose --source hotpotqa-dev --objectives 2 --passes 2 --seed 1 --max-turns 4 --agent-name mem1_agent \
  --out "$OUT/data/dev-2obj.parquet"

SFT=${SFT_MODEL:-$OUT/sft/global_step_$SFT_STEPS/huggingface}  # SFT_MODEL: an SFT checkpoint to start from instead
[ -f "$SFT/config.json" ] || {
  stamp "oracle episodes, SFT ($SFT_STEPS steps of 4 episodes)"
  for N in 1 2 3; do
    $MEM1 trajectories --policy oracle --tasks "$OUT/data/train-${N}obj.parquet" --retriever "$URL" \
      --tokenizer "$OUT/smollm2" --out "$OUT/oracle-${N}obj.jsonl"
  done
  $MEM1 sft --no-progress "data.train_files=[$OUT/oracle-1obj.jsonl,$OUT/oracle-2obj.jsonl,$OUT/oracle-3obj.jsonl]" \
    "model.path=$OUT/smollm2" \
    data.train_batch_size=4 data.micro_batch_size_per_gpu=2 optim.lr=1e-4 "trainer.total_training_steps=$SFT_STEPS" \
    trainer.test_freq=-1 "trainer.default_local_dir=$OUT/sft" trainer.resume_mode=disable
}
SFT_NAME=$(basename "$(dirname "$SFT")")  # global_step_N
[ -f "$OUT/eval/sft-$SFT_NAME/metrics.json" ] || { stamp "SFT checkpoint, held-out"; \
  $MEM1 eval --model "$SFT" --tasks "$OUT/data/dev-2obj.parquet" $EVAL --out "$OUT/eval/sft-$SFT_NAME"; }

RL="$OUT/rl/global_step_$RL_STEPS/actor/huggingface"
[ -f "$RL/model.safetensors" ] || {
  stamp "GRPO on verl's trainer ($RL_STEPS steps)"
  mkdir -p "$OUT/rl"
  # shellcheck disable=SC2086
  VERL_PLATFORM=cpu VERL_FILE_LOGGER_PATH="$(realpath "$OUT")/rl/metrics.jsonl" $BIN/python -m verl_mem1.train \
    --config-dir "$PWD/recipes" --config-name qa +experiment=smol_qa \
    "actor_rollout_ref.model.path=$(realpath "$SFT")" \
    "data.train_files=$(realpath "$OUT/data/train-2obj.parquet")" "data.val_files=$(realpath "$OUT/data/dev-2obj.parquet")" \
    "actor_rollout_ref.rollout.agent.agent_loop_config_path=$PWD/recipes/agent_loops.yaml" \
    "mem1.retriever_url=$URL" "trainer.default_local_dir=$(realpath "$OUT")/rl" \
    "trainer.total_training_steps=$RL_STEPS" "trainer.save_freq=$RL_STEPS" 'trainer.logger=[console,file]' $RL_ARGS \
    2>&1 | tee "$OUT/rl/train.log"
}
$MEM1 curve "$OUT/rl" || true
[ -f "$OUT/eval/rl-$RL_STEPS/metrics.json" ] || { stamp "RL checkpoint, held-out"; \
  $MEM1 eval --model "$RL" --tasks "$OUT/data/dev-2obj.parquet" $EVAL --out "$OUT/eval/rl-$RL_STEPS"; }
$MEM1 compare "$OUT/eval/sft-$SFT_NAME" "$OUT/eval/rl-$RL_STEPS" --out "$OUT/eval/sft-vs-rl.md"

stamp "memory sweep: the RL checkpoint at 1, 2, 4, 8 objectives, mem1 vs full"
for N in 1 2 4 8; do
  $MEM1 compose --source hotpotqa-dev --objectives "$N" --count "$SWEEP_TASKS" --seed 2 --max-turns $((N + 2)) \
    --out "$OUT/sweep/dev-${N}obj.parquet"
  for CONTEXT in mem1 full; do
    [ -f "$OUT/sweep/rl-$RL_STEPS/${N}obj-$CONTEXT/metrics.json" ] || $MEM1 eval --model "$RL" \
      --tasks "$OUT/sweep/dev-${N}obj.parquet" --context "$CONTEXT" --max-turns $((N + 2)) \
      --retriever "$URL" --temperature 0 --max-new-tokens $((48 + 24 * N)) --concurrency 16 --max-batch-size 16 \
      --out "$OUT/sweep/rl-$RL_STEPS/${N}obj-$CONTEXT"
  done
done
$MEM1 report "$OUT/sweep/rl-$RL_STEPS"/*obj-* --out "$OUT/sweep/rl-$RL_STEPS/report"
stamp "done: the RL checkpoint (a Hugging Face folder) is $RL"
