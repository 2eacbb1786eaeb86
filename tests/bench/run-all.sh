#!/usr/bin/env bash
# tests/bench/run-all.sh — run every benchmark of the project and print one
# summary table: each figure beside its reference measured in the same run
# (sgemm peak, memcpy bandwidth, AES-GCM rate, plaintext ZeroMQ) and the ratio.
#
#   transport  bench_transport   TLS channel MiB/s vs plaintext ZeroMQ and vs
#                                the crypto-bound ceiling; AES-256-GCM rate
#   codec      bench_codec       q4 decode+accumulate GB/s vs memcpy
#   forward    bench_forward     forward GFLOP/s vs the sgemm peak (2048^3)
#   training   fedlora-node train (LoRA and --full) on the bench_forward
#              "small" shape; tokens/s, and GFLOP/s (6 x params x tokens/s,
#              matmuls only, attention not counted) vs the same sgemm peak;
#              tests/bench/bench_train (LoRA r8 on the ~6M and ~110M shapes,
#              F32/Q8_0/Q4_0 bases): matmul GFLOP/s vs the sgemm peak
#   aggregate  bench_aggregate   per-update aggregation time vs memcpy
#   gptq       bench_gptq        GPTQ-Q4_0 export time vs one F32 forward pass
#
# Usage: tests/bench/run-all.sh [--quick]
#   --quick   fewer repetitions and smaller cases (minutes instead of tens
#             of minutes); the summary says which mode ran.
# Environment: FEDLORA_BUILD [<repo>/build] (benchmarks in $FEDLORA_BUILD/tests),
#   FEDLORA_SHARED [<repo>/../shared] (data in its data/), BENCH_OUT [<build>/bench-out] raw logs.
# shellcheck disable=SC2054 # "1,4" is one argument (--sizes 1,4)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${FEDLORA_BUILD:-$here/build}
export FEDLORA_SHARED=${FEDLORA_SHARED:-$here/../shared}
out=${BENCH_OUT:-$build/bench-out}
quick=0
[[ ${1:-} == --quick ]] && quick=1
bd=$build/tests
[[ -x $bd/bench_codec ]] || bd=$build
node=$build/fedlora-node
mkdir -p "$out"
export FEDLORA_NODE_BIN=$node
rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s |' "$@")"); }
trim() { awk '{$1 = $1; print}' <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.3f", a / b; else printf "-" }'; }
run() { # name, command...
  local name=$1
  shift
  printf '== %s: %s\n' "$name" "$*" >&2
  local t0=$SECONDS
  # a hung benchmark is stopped after $limit s; its partial output stays
  timeout "$limit" stdbuf -oL "$@" >"$out/$name.txt" 2>"$out/$name.err"
  local rc=$?
  ((rc == 124)) && echo "stopped after ${limit}s (timeout)" >>"$out/$name.err"
  printf '   %ds, exit %d, output %s\n' "$((SECONDS - t0))" "$rc" "$out/$name.txt" >&2
  return $rc
}

if ((quick)); then
  tr_args=(--reps 3 --skip-memory)
  codec_args=(4194304 3)
  fwd_args=(--only small --reps 3)
  agg_args=(--sizes 1,4 --updates 20 --reps 3)
  gptq_args=(--shape small --calib-seqs 16 --held-seqs 8)
  btr_args=(--reps 2 --steps 1 --only small)
  train_steps=10
  limit=300
else
  tr_args=()
  codec_args=()
  fwd_args=()
  agg_args=(--max-buffer-mb 2000)
  gptq_args=(--shape small)
  btr_args=(--reps 3 --steps 1)
  train_steps=30
  limit=1800
fi

# ---------------------------------------------------------------- transport
if run transport "$bd/bench_transport" "${tr_args[@]}"; then
  f=$out/transport.txt
  aes=$(awk '/^AES-256-GCM/ {print $(NF-1)}' "$f")
  row "transport" "AES-256-GCM, 1 core, 16 KiB records" "$aes MiB/s" "(reference)" "-"
  for sz in 1 16 64; do
    for dir in up down; do
      read -r pl tl ce < <(awk -v s="$sz" -v d="$dir" '$1 == s && $2 == "MiB" && $3 == d {print $4, $5, $6}' "$f")
      [[ -n ${tl:-} ]] || continue
      row "transport" "TLS channel, $sz MiB $dir" "$tl MiB/s" "plaintext ZeroMQ $pl MiB/s" "$(ratio "$tl" "$pl")"
      row "transport" "TLS channel, $sz MiB $dir" "$tl MiB/s" "ceiling 1/(1/plain+1/AES) $ce MiB/s" "$(ratio "$tl" "$ce")"
    done
  done
else
  row "transport" "FAILED or timed out (see $out/transport.err)" "-" "-" "-"
fi

# ---------------------------------------------------------------- codec
if run codec "$bd/bench_codec" "${codec_args[@]}"; then
  f=$out/codec.txt
  mc=$(awk '/^memcpy bandwidth/ {print $(NF-1)}' "$f")
  q4=$(awk '/^q4\/32 decode\+accumulate/ {for (i = 1; i <= NF; i++) if ($i == "GB/s") {print $(i-1); exit}}' "$f")
  row "codec" "q4/32 decode+accumulate, 1 core (avx2)" "${q4:--} GB/s" "memcpy $mc GB/s" "$(ratio "${q4:-0}" "$mc")"
else
  row "codec" "FAILED (see $out/codec.err)" "-" "-" "-"
fi

# ---------------------------------------------------------------- forward
peak=""
if run forward "$bd/bench_forward" "${fwd_args[@]}"; then
  f=$out/forward.txt
  peak=$(awk '/^reference: sgemm/ {for (i = 1; i <= NF; i++) if ($i == "GFLOP/s") {print $(i-1); exit}}' "$f")
  while read -r shape type params tps gf _; do
    row "forward" "$shape $type ($params), $tps tokens/s" "$gf GFLOP/s" "sgemm peak $peak GFLOP/s" "$(ratio "$gf" "$peak")"
  done < <(awk '($1 == "small" || $1 == "large") && tolower($2) ~ /^(f32|q8_0|q4_0)$/ && NF >= 8' "$f")
else
  row "forward" "FAILED (see $out/forward.err)" "-" "-" "-"
fi

# ---------------------------------------------------------------- training
tdir=$out/train-work
rm -rf "$tdir" && mkdir -p "$tdir"
if "$node" init-model --out "$tdir/small.gguf" --dim 288 --layers 6 --heads 6 --ffn 768 \
  --ctx 256 --seed 1 >/dev/null 2>&1; then
  head -c 2000000 "$FEDLORA_SHARED/data/warpeace.txt" >"$tdir/data.txt"
  params=$(awk '/params/ {for (i = 1; i <= NF; i++) if ($i ~ /M$/ && $(i+1) ~ /^params/) {sub(/M$/, "", $i); print $i; exit}}' \
    < <("$node" eval --model "$tdir/small.gguf" --data "$tdir/data.txt" --max-tokens 64 --ctx 32 2>&1))
  for mode in lora full; do
    extra=()
    [[ $mode == full ]] && extra=(--full)
    [[ $mode == lora ]] && extra=(--rank 16 --targets all)
    if run "train-$mode" "$node" train --model "$tdir/small.gguf" --data "$tdir/data.txt" \
      --out "$tdir/$mode" --steps "$train_steps" --batch 4 --ctx 256 --threads 2 \
      --log-every 1 "${extra[@]}"; then
      # median tokens/s over the logged steps after the first
      tps=$(awk '/^step/ {for (i = 1; i <= NF; i++) if ($i == "tok/s") print $(i-1)}' "$out/train-$mode.txt" "$out/train-$mode.err" |
        tail -n +2 | sort -n | awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2)}')
      gf=$(awk -v t="${tps:-0}" -v p="${params:-0}" 'BEGIN {printf "%.1f", 6 * p * 1e6 * t / 1e9}')
      lbl="LoRA r16 all targets"
      [[ $mode == full ]] && lbl="full (every weight)"
      row "training" "$lbl, small ${params}M, B4 T256, 2 threads: ${tps:--} tokens/s" "$gf GFLOP/s (6 x params x tok/s)" "sgemm peak ${peak:--} GFLOP/s" "$(ratio "$gf" "${peak:-0}")"
    else
      row "training" "$mode FAILED (see $out/train-$mode.err)" "-" "-" "-"
    fi
  done
fi
if [[ -x $bd/bench_train ]]; then
  if run train "$bd/bench_train" "${btr_args[@]}"; then
    f=$out/train.txt
    # shape type params weights tok/s GFLOP/s %peak mmGF/s %peak ...; the
    # reference is the sgemm peak sampled between that shape's timed rounds
    while read -r shp typ par _ tps gf _ mmgf _; do
      pk=$(awk -v s="$shp" '$1 == s && $2 == "sgemm" {for (i = 1; i <= NF; i++) if ($i == "GFLOP/s") {print $(i-1); exit}}' "$f")
      row "training" "bench_train $shp ($par) $typ base, LoRA r8 all projections, B4 T256: $tps tokens/s" \
        "matmuls $mmgf GFLOP/s (whole step $gf)" "sgemm peak ${pk:--} GFLOP/s" "$(ratio "$mmgf" "${pk:-0}")"
    done < <(awk '($1 == "small" || $1 == "large") && ($2 == "f32" || $2 == "q8_0" || $2 == "q4_0") && NF >= 15' "$f")
  else
    row "training" "bench_train FAILED (see $out/train.err)" "-" "-" "-"
  fi
fi

# ---------------------------------------------------------------- aggregate
if run aggregate "$bd/bench_aggregate" "${agg_args[@]}"; then
  while read -r p s upd _ _ mcu ru _ _ _; do
    row "aggregate" "$p params, $s, 1 q4 update" "$upd ms" "memcpy of the update's q4 bytes $mcu" "$ru (time ratio)"
  done < <(awk '$1 ~ /^[0-9]+M$/ && ($2 == "fedavg" || $2 == "trimmed_mean") && NF >= 10' "$out/aggregate.txt")
else
  row "aggregate" "FAILED (see $out/aggregate.err)" "-" "-" "-"
fi

# ---------------------------------------------------------------- gptq
if run gptq "$bd/bench_gptq" "${gptq_args[@]}"; then
  fwd=$(awk '/^reference: one F32 forward/ {print $(NF-1)}' "$out/gptq.txt")
  while IFS='|' read -r _ v ppl ex _ t x _; do
    row "gptq" "export $(trim "$v") (small), ppl $(trim "$ppl"), nll excess $(trim "$ex")" "$(trim "$t")" "one F32 forward ${fwd} s" "$(trim "$x") (time ratio)"
  done < <(grep -E '^\| (RTN|GPTQ)' "$out/gptq.txt")
else
  row "gptq" "FAILED (see $out/gptq.err)" "-" "-" "-"
fi

# ---------------------------------------------------------------- summary
echo
echo "fedlora benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), mode: $( ((quick)) && echo quick || echo full)"
echo "machine: $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), $(nproc) CPUs; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| bench | figure | value | reference (same run) | ratio |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "raw outputs: $out"
