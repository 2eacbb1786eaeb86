#!/usr/bin/env bash
# test_quality_corpus — the quality experiment's knobs on a second corpus,
# tiny: a base pretrained on tinyshakespeare, the task War and Peace (prose,
# no speakers) split by document (PART_KEY=document, every 400 paragraphs a
# document, each shard's tail held out), a learning-rate sweep for every run
# (the centralized baseline included) and two seeds. Asserts the experiment's
# bookkeeping, not the quality ordering (tests/integration/test_quality_small.sh
# does that): the table names the task, every run is reported at the best
# learning rate of its own sweep, as mean +- sd over the seeds, with win
# counts over nodes x seeds; the shards are whole documents with held-out
# tails; SHARD_DIR reuses shards; the best centralized run beats the base.
set -euo pipefail
# shellcheck source=tests/integration/quality_lib.sh
. "$(dirname "$0")/quality_lib.sh"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
# shellcheck source=tests/integration/cli_lib.sh
. "$src/tests/integration/cli_lib.sh"
set +e
export FEDLORA_BUILD=$build FEDLORA_SHARED=$shared CACHE=$DIR/cache OUT=$DIR/qout
export NODES=3 PER_ROUND=2 ROUNDS=2 LOCAL_STEPS=4 BATCH=4 CTX=64 RANK=4 ALPHA=8
export EVAL_TOKENS=1024 DIM=64 LAYERS=2 HEADS=4 FFN=192 MCTX=64 PRE_STEPS=60
export PRE_DATA=tinyshakespeare.txt TASK_DATA=warpeace.txt TASK_NAME=warpeace
export PART_KEY=document PART_ARGS="--doc-size 400" LRS="0.003 0.01" SEEDS="1 2"
t0=$SECONDS
bash "$src/tests/bench/quality/run.sh" central f32 >"$DIR/run.log" 2>&1
rc=$?
echo "tiny second-corpus experiment: $((SECONDS - t0)) s"
check "the experiment ran (exit $rc)" "[ $rc = 0 ]" || tail -30 "$DIR/run.log"
T=$OUT/table.md
cat "$T"

pj=$(ls "$CACHE"/shards-3-*/partition.json 2>/dev/null | head -1)
check "partition by document: key and size recorded" \
	"grep -q '\"key\":[[:space:]]*\"document\"' '$pj' && grep -q '\"doc_size\":[[:space:]]*400' '$pj'"
check "the table names the task" "grep -q '^Task: warpeace (warpeace.txt, by-key by document --doc-size 400)' '$T' &&
	grep -q '| warpeace mean held-out |' '$T' && grep -q 'on the 3 warpeace held-out' '$T'"
for r in central f32; do
	row=$(grep "^| $r | " "$T" | head -1)
	sweep=$(grep "^| $r | [0-9]" "$T" | tail -1)
	check "$r: mean +- sd over 2 seeds ($row)" "grep -qE '\\| [0-9.]+ \\+- [0-9.]+ \\|' <<<'$row'"
	# the reported lr is the argmin of the run's sweep row, marked with *
	want=$(awk -F'|' -v lrs="$LRS" '{split(lrs, L, " "); b = ""; for (i = 3; i < NF; i++) { v = $i; gsub(/[ *]/, "", v); if (b == "" || v + 0 < bv) { b = L[i - 2]; bv = v + 0 } } print b}' <<<"$sweep")
	got=$(awk -F'|' '{gsub(/ /, "", $3); print $3}' <<<"$row")
	check "$r: reported at the best lr of its sweep ($got; sweep: $sweep)" \
		"[ -n '$want' ] && [ '$got' = '$want' ] && [ \$(grep -o '\\*' <<<'$sweep' | wc -l) = 1 ]"
done
check "central: wins vs f32 over 3 nodes x 2 seeds" "grep '^| central | ' '$T' | grep -qE '\\| [0-6]/6 \\|'"
check "f32: traffic of both directions reported" "grep '^| f32 | ' '$T' | grep -qE '[0-9.]+% \\| [0-9.]+% \\|'"
for s in 1 2; do
	for lr in $LRS; do
		check "results for central and f32 at lr $lr, seed $s" \
			"[ -s '$OUT/central@$lr@$s.evals' ] && [ -s '$OUT/f32@$lr@$s.evals' ]"
	done
done
# the centralized baseline at its best lr learns the new corpus
base=$(awk '{s += $2} END {printf "%.5f", s / NR}' "$OUT/base.evals")
cen=$(grep -m1 '^| central | ' "$T" | awk -F'|' '{split($4, a, " "); print a[1]}')
check "central (best lr) $cen below the base $base" "awk -v c='$cen' -v b='$base' 'BEGIN { exit !(c < b) }'"
# shards from elsewhere: SHARD_DIR
shards=$(dirname "$pj")
SHARD_DIR=$shards OUT=$DIR/qout2 LRS=0.01 SEEDS=1 bash "$src/tests/bench/quality/run.sh" central >"$DIR/run2.log" 2>&1
check "SHARD_DIR: a run on the given shards (exit $?)" "grep -q 'shards from $shards' '$DIR/qout2/table.md'"
SHARD_DIR=$DIR/nowhere OUT=$DIR/qout3 bash "$src/tests/bench/quality/run.sh" central >"$DIR/run3.log" 2>&1
check "SHARD_DIR without shards: refused by name" "grep -q 'SHARD_DIR $DIR/nowhere has no node-002/train.txt' '$DIR/run3.log'"

echo "test_quality_corpus: $pass passed, $fails failed"
[ "$fails" = 0 ]
