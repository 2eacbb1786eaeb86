#!/usr/bin/env bash
# deploy/plot.sh draws non-empty PNG charts and CSV tables from a recorded
# run (tests/integration/data/quickstart-run: a quickstart's coordinator
# journal and its four nodes' metrics).
set -euo pipefail
src=${FEDLORA_SRC:?}
command -v gnuplot >/dev/null || { echo "SKIP: gnuplot not installed"; exit 77; }
out=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$out"' EXIT
run=$src/tests/integration/data/quickstart-run
bash "$src/deploy/plot.sh" "$out" "$run/journal.jsonl" "$run"/node-0?.metrics.jsonl
for png in loss bytes round_time; do
	f=$out/$png.png
	[ -s "$f" ] || { echo "FAIL: $png.png missing or empty"; exit 1; }
	[ "$(head -c 8 "$f" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
		{ echo "FAIL: $png.png is not a PNG"; exit 1; }
	[ "$(stat -c %s "$f")" -gt 5000 ] || { echo "FAIL: $png.png suspiciously small"; exit 1; }
done
# the tables hold every round: 6 committed rounds, 4 nodes each
[ "$(grep -c '^[0-9]*,1,' "$out/rounds.csv")" -eq 6 ] || { echo "FAIL: rounds.csv"; cat "$out/rounds.csv"; exit 1; }
[ "$(($(wc -l <"$out/nodes.csv") - 1))" -eq 24 ] || { echo "FAIL: nodes.csv"; cat "$out/nodes.csv"; exit 1; }
# bad input is refused with a message
if bash "$src/deploy/plot.sh" "$out/x" /nonexistent.jsonl 2>/dev/null; then echo "FAIL: missing file accepted"; exit 1; fi
echo "ok: 3 charts and 2 tables from a recorded run"
