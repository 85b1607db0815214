#!/usr/bin/env bash
# MEM1 learning on 2 CPU cores with SmolLM2-135M-Instruct (`make learn`, ~2.5 h): SFT on oracle trajectories
# (sft_smollm2.sh), then GRPO from the SFT checkpoint (recipes/smol_qa.yaml) with held-out evaluations, the learning
# curve, and MEM1 vs full context at 1, 2, 4 and 8 objectives for the trained model. Every step is a `mem1` command;
# the numbers are recorded in benchmarks/README.md ("Learning").
set -euo pipefail
OUT=${OUT:-outputs/learn}
MEM1=${MEM1:-.venv/bin/mem1}
PORT=${PORT:-8011}
GRPO_ARGS=${GRPO_ARGS:-}
SWEEP_TASKS=${SWEEP_TASKS:-8}
export OUT MEM1 PORT

[ -f "$OUT/sft/global_step_24/actor/config.json" ] || bash "$(dirname "$0")/sft_smollm2.sh"

# GRPO: 1-objective train tasks, 128 held-out dev tasks evaluated (greedy) at steps 0 and 12 (SKIP_GRPO=1: use the
# run already there)
[ "${SKIP_GRPO:-0}" = 1 ] || $MEM1 train --config-name smol_qa --no-progress \
  "actor_rollout_ref.model.path=$OUT/sft/global_step_24/actor" "trainer.default_local_dir=$OUT/grpo" $GRPO_ARGS
$MEM1 curve "$OUT/grpo" | tee "$OUT/grpo/summary.md"
TRAINED="$OUT/grpo/global_step_$(cat "$OUT/grpo/latest_checkpointed_iteration.txt")/actor"

# MEM1 vs full context for the trained model, SWEEP_TASKS held-out tasks per objective count
$MEM1 serve retrieval --index "$OUT/index-bm25" --port "$PORT" --no-access-log &
SERVER=$!
trap 'kill $SERVER' EXIT
sleep 15
for N in 1 2 4 8; do
  [ -f "$OUT/sweep/dev-${N}obj.parquet" ] || $MEM1 compose --source hotpotqa-dev --objectives "$N" \
    --count "$SWEEP_TASKS" --seed 1 --out "$OUT/sweep/dev-${N}obj.parquet"
  for CONTEXT in mem1 full; do
    $MEM1 eval --model "$TRAINED" --tasks "$OUT/sweep/dev-${N}obj.parquet" --retriever "http://127.0.0.1:$PORT" \
      --context "$CONTEXT" --max-turns $((N + 2)) --temperature 0 --max-new-tokens 96 --concurrency 8 \
      --max-batch-size 8 --out "$OUT/sweep/${N}obj-$CONTEXT"
  done
done
$MEM1 report "$OUT"/sweep/*obj-* --out "$OUT/sweep/report"
