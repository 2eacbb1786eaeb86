#!/usr/bin/env bash
# tests/bench/gptq-trained.sh — GPTQ against round-to-nearest on the ~110M
# reference shape after a short training run, on real text:
#   1. `fedlora-node init-model` with the ~110M shape of bench_gptq's
#      "large": dim 768, 12 layers, 12 heads, ffn 2048, tied embeddings,
#      the 32,000-token vocabulary of ggml-vocab-llama-spm.gguf;
#   2. `fedlora-node train --full` for STEPS steps on the first 95 % of
#      warpeace.txt (the last 5 % held out); cached in $CACHE;
#   3. `bench_gptq --model`: F32, RTN-Q8_0, GPTQ-Q8_0, RTN-Q4_0, GPTQ-Q4_0 —
#      perplexity on held-out text, file sizes, export wall time (and as a
#      multiple of one F32 forward pass over the calibration tokens, measured
#      in the same run), peak RSS of each export. Calibration text is the
#      training text (local data), held-out text the last 5 %.
#
# Usage: tests/bench/gptq-trained.sh [--train-only]
#   --train-only   stop after the (cached) training run, e.g. to benchmark
#                  later on a quiet machine
# Environment (defaults in brackets):
#   FEDLORA_BUILD [<repo>/build]  FEDLORA_SHARED [<repo>/../shared] (data in its data/)
#   CACHE [<build>/gptq-cache]  STEPS [240]  BATCH [4]  CTX [128]  LR [1e-3]
#   CALIB_SEQS [32]  HELD_SEQS [16]  SEQ [256]  THREADS [2]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/lib.sh
. "$here/tests/lib.sh"
build=${FEDLORA_BUILD:-$here/build}
shared=${FEDLORA_SHARED:-$here/../shared}/data
CACHE=${CACHE:-$build/gptq-cache}
STEPS=${STEPS:-240} BATCH=${BATCH:-4} CTX=${CTX:-128} LR=${LR:-1e-3}
CALIB_SEQS=${CALIB_SEQS:-32} HELD_SEQS=${HELD_SEQS:-16} SEQ=${SEQ:-256} THREADS=${THREADS:-2}
node_bin=$build/fedlora-node
bench=$build/tests/bench_gptq
[[ -x $bench ]] || bench=$build/bench_gptq

die() {
  printf 'gptq-trained: %s\n' "$*" >&2
  exit 1
}
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
[[ -x $node_bin && -x $bench ]] || die "build fedlora-node and bench_gptq in $build first"
vocab=$shared/vocab/ggml-vocab-llama-spm.gguf
[[ -f $shared/warpeace.txt && -f $vocab ]] || die "data missing in $shared"
mkdir -p "$CACHE"

model=$CACHE/trained-110m-s$STEPS.gguf
if [[ ! -f $model ]]; then
  split_lines "$shared/warpeace.txt" "$CACHE/train.txt" "$CACHE/held.txt"
  "$node_bin" init-model --out "$CACHE/init.gguf" --dim 768 --layers 12 --heads 12 \
    --ffn 2048 --ctx 256 --vocab-from "$vocab" --tie-embeddings --seed 7 \
    --threads "$THREADS" >"$CACHE/init.log" || die "init-model failed ($CACHE/init.log)"
  say "training the ~110M model: $STEPS steps x $BATCH x $CTX tokens (log: $CACHE/train.log)"
  rm -rf "$CACHE/run"
  "$node_bin" train --full --model "$CACHE/init.gguf" --data "$CACHE/train.txt" \
    --eval-data "$CACHE/held.txt" --eval-tokens 4096 --out "$CACHE/run" --steps "$STEPS" \
    --batch "$BATCH" --ctx "$CTX" --lr "$LR" --seed 1 --log-every 20 --threads "$THREADS" \
    >"$CACHE/train.log" 2>&1 || die "training failed, see $CACHE/train.log"
  mv "$CACHE/run/model.gguf" "$model"
  rm -f "$CACHE/init.gguf"
fi
grep -E '^(done|eval|memory)' "$CACHE/train.log" || true
[[ ${1:-} == --train-only ]] && exit 0
say "bench_gptq on $model"
OMP_NUM_THREADS=$THREADS "$bench" --model "$model" --calib-text "$CACHE/train.txt" \
  --held-text "$CACHE/held.txt" --calib-seqs "$CALIB_SEQS" --held-seqs "$HELD_SEQS" \
  --seq "$SEQ" --threads "$THREADS"
