#!/usr/bin/env bash
# SmolLM2-135M-Instruct on MEM1 QA, zero-shot vs after SFT on oracle trajectories, on 2 CPU cores (~35 min).
# Every step is a `mem1` command; the numbers are recorded in benchmarks/README.md ("Learning: SFT on CPU").
set -euo pipefail
OUT=${OUT:-outputs/learn}
MEM1=${MEM1:-.venv/bin/mem1}
PORT=${PORT:-8011}
EVAL="--tasks verl_mem1/data/hotpotqa/dev.jsonl --limit 24 --retriever http://127.0.0.1:$PORT --temperature 0
      --max-new-tokens 160 --concurrency 8 --max-batch-size 8"
mkdir -p "$OUT"
$MEM1 model smollm2 --out "$OUT/smollm2"
[ -f "$OUT/index-bm25/meta.json" ] || {
  $MEM1 corpus hotpotqa --out "$OUT/corpus.jsonl"
  $MEM1 index build --corpus "$OUT/corpus.jsonl" --out "$OUT/index-bm25" --encoder bm25 --quiet
}
$MEM1 serve retrieval --index "$OUT/index-bm25" --port "$PORT" --no-access-log &
SERVER=$!
trap 'kill $SERVER' EXIT
sleep 15
$MEM1 compose --source hotpotqa-train --objectives 1 --seed 0 --out "$OUT/train-1obj.parquet"
$MEM1 trajectories --policy oracle --tasks "$OUT/train-1obj.parquet" --retriever "http://127.0.0.1:$PORT" \
  --tokenizer "$OUT/smollm2" --out "$OUT/oracle.jsonl"
[ "${SKIP_ZERO_SHOT:-0}" = 1 ] || $MEM1 eval --model "$OUT/smollm2" $EVAL --out "$OUT/eval-zero-shot"
$MEM1 sft --no-progress "data.train_files=[$OUT/oracle.jsonl]" "model.path=$OUT/smollm2" \
  data.train_batch_size=4 data.micro_batch_size_per_gpu=2 optim.lr=1e-4 trainer.total_training_steps=24 \
  trainer.test_freq=8 "trainer.default_local_dir=$OUT/sft" trainer.resume_mode=disable
[ "${SKIP_SFT_EVAL:-0}" = 1 ] || $MEM1 eval --model "$OUT/sft/global_step_24/huggingface" $EVAL --out "$OUT/eval-sft"
