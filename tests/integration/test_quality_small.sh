#!/usr/bin/env bash
# test_quality_small — a reduced run of the federated-learning quality
# experiment (tests/bench/quality/run.sh): a tiny base model pretrained with
# `fedlora-node train --full` on warpeace.txt, tinyshakespeare split by
# speaking role into 4 non-IID shards, 2 of 4 nodes sampled a round, real
# coordinator and node processes over mutual TLS on 127.0.0.1.
#
# Asserts the ordering that must hold, on the mean per-node held-out loss:
#   federated f32 < base model, federated f32 < local-only training with the
#   same number of training tokens, and q4 + error feedback within
#   MARGIN (0.03 nats/byte) of f32.
set -euo pipefail
# shellcheck source=tests/integration/quality_lib.sh
. "$(dirname "$0")/quality_lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
MARGIN=0.03
export FEDLORA_BUILD=$build FEDLORA_SHARED=$shared CACHE=$tmp/cache OUT=$tmp/out
export NODES=4 PER_ROUND=2 ROUNDS=4 LOCAL_STEPS=8 BATCH=4 CTX=64 LR=0.003 RANK=8 ALPHA=16
export EVAL_TOKENS=2048 DIM=64 LAYERS=2 HEADS=4 FFN=192 MCTX=64 PRE_STEPS=150
t0=$SECONDS
bash "$src/tests/bench/quality/run.sh" local f32 q4ef
echo "reduced quality experiment: $((SECONDS - t0)) s"
m() { awk '{print $2}' "$OUT/$1@$LR@1.res"; }
base=$(awk '{s += $2} END {printf "%.5f", s / NR}' "$OUT/base.evals")
local_=$(m local) f32=$(m f32) q4ef=$(m q4ef)
echo "mean held-out loss: base $base, local-only $local_, fedavg f32 $f32, fedavg q4+EF $q4ef"
fail=0
check() { # description, awk condition
  if awk -v b="$base" -v l="$local_" -v f="$f32" -v q="$q4ef" -v M="$MARGIN" "BEGIN { exit !($2) }"; then
    echo "ok: $1"
  else
    echo "FAIL: $1"
    fail=1
  fi
}
check "federated f32 beats the base model" "f < b"
check "federated f32 beats local-only" "f < l"
check "federated q4+EF beats the base model" "q < b"
check "q4+EF within $MARGIN of f32" "q - f <= M"
exit $fail
