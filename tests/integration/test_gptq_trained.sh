#!/usr/bin/env bash
# test_gptq_trained — GPTQ against round-to-nearest on a small *trained*
# model and real text, through the real binaries:
#   1. `fedlora-node init-model` (byte vocabulary, dim 96, 2 layers) and
#      `fedlora-node train --full` on the first 95 % of warpeace.txt;
#   2. `fedlora-node export --format merged` with --type q4_0 (RTN) and with
#      --quantize gptq-q4_0 --calib <training text> (GPTQ), and the same for
#      q8_0;
#   3. `fedlora-node eval` of every file on the held-out last 5 %.
# Asserts: training lowered the held-out loss; GPTQ-Q4_0's held-out loss is
# below RTN-Q4_0's; every quantized file stays within a stated margin of
# F32 (Q8_0: 0.02 nats/byte, Q4_0: 0.5). Prints the numbers.
set -euo pipefail
src=${FEDLORA_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
# shellcheck source=tests/lib.sh
. "$src/tests/lib.sh"
build=${FEDLORA_BUILD:-$src/build}
shared=${FEDLORA_SHARED:-}
if [[ -z $shared || ! -f $shared/data/warpeace.txt ]]; then
  echo "SKIP: FEDLORA_SHARED/data/warpeace.txt not found (FEDLORA_SHARED=$shared)"
  exit 77
fi
node=$build/fedlora-node
[[ -x $node ]] || {
  echo "SKIP: $node not built"
  exit 77
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
split_lines "$shared/data/warpeace.txt" "$tmp/train.txt" "$tmp/held.txt"

"$node" init-model --out "$tmp/init.gguf" --dim 96 --layers 2 --heads 4 --ffn 256 --ctx 64 \
  --seed 3 >/dev/null
"$node" train --full --model "$tmp/init.gguf" --data "$tmp/train.txt" --out "$tmp/run" \
  --steps 300 --batch 8 --ctx 64 --lr 3e-3 --seed 1 --log-every 100 >"$tmp/train.log" 2>&1 || {
  cat "$tmp/train.log"
  exit 1
}
m=$tmp/run/model.gguf

loss() { # MODEL -> held-out nats/byte
  "$node" eval --model "$1" --data "$tmp/held.txt" --ctx 64 --max-tokens 32768 --batch 8 |
    awk '/^result/ {print $3}'
}
exp() { # NAME ARGS...
  local name=$1
  shift
  "$node" export --model "$m" --format merged --out "$tmp/$name.gguf" "$@" >"$tmp/$name.log" 2>&1 || {
    cat "$tmp/$name.log"
    exit 1
  }
}
cal=(--calib "$tmp/train.txt" --calib-seqs 64 --calib-ctx 64)
exp rtn4 --type q4_0
exp gptq4 --quantize gptq-q4_0 "${cal[@]}"
exp rtn8 --type q8_0
exp gptq8 --quantize gptq-q8_0 "${cal[@]}"

l0=$(loss "$tmp/init.gguf")
l32=$(loss "$m")
printf 'held-out loss (nats/byte, 32768 tokens of the last 5 %% of warpeace.txt):\n'
printf '  untrained %s\n  F32       %s\n' "$l0" "$l32"
declare -A l
for v in rtn8 gptq8 rtn4 gptq4; do
  l[$v]=$(loss "$tmp/$v.gguf")
  printf '  %-9s %s (excess over F32 %s)\n' "$v" "${l[$v]}" \
    "$(awk -v a="${l[$v]}" -v b="$l32" 'BEGIN {printf "%+.5f", a - b}')"
done
ok() { awk "BEGIN {exit !($1)}"; }
fail=0
ok "$l32 < $l0 - 0.5" || {
  echo "FAIL: training did not lower the held-out loss enough ($l0 -> $l32)"
  fail=1
}
ok "${l[gptq4]} < ${l[rtn4]}" || {
  echo "FAIL: GPTQ-Q4_0 (${l[gptq4]}) is not below RTN-Q4_0 (${l[rtn4]})"
  fail=1
}
for v in rtn8 gptq8; do
  ok "${l[$v]} < $l32 + 0.02" || {
    echo "FAIL: $v (${l[$v]}) more than 0.02 above F32 ($l32)"
    fail=1
  }
done
for v in rtn4 gptq4; do
  ok "${l[$v]} < $l32 + 0.5" || {
    echo "FAIL: $v (${l[$v]}) more than 0.5 above F32 ($l32)"
    fail=1
  }
done
exit $fail
