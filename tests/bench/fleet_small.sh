#!/usr/bin/env bash
# A small run of the fleet load generator (tests/bench/bench_fleet.c), in
# the slow label: 500 real mTLS node sessions held by two processes, one
# real coordinator, 2 rounds of 50 sampled nodes uploading q4 updates.
# Checks that every session was welcomed, both rounds committed with at
# least 45 of 50 updates accepted (rounds.min_updates), and no session
# stopped on an error. The figures it
# prints are not checked (no timing assertions).
set -euo pipefail
build=${FEDLORA_BUILD:?}
bench="$build/tests/bench_fleet"
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -x "$bench" ] || fail "$bench is missing (this test is registered only with FEDLORA_BENCH=ON)"
out=$(mktemp /tmp/fltest-fleet.XXXXXX)
dir=$(mktemp -d /tmp/fltest-fleet-dir.XXXXXX)
trap 'rm -rf "$out" "$dir"' EXIT
rc=0
"$bench" --nodes 500 --per-round 50 --rounds 2 --layers 2 --dim 256 --rank 8 --procs 2 \
	--dir "$dir" --timeout-s 300 >"$out" 2>&1 || rc=$?
cat "$out"
[ "$rc" -eq 0 ] || { tail -n 30 "$dir/coordinator.log" || true; fail "bench_fleet exited $rc"; }
grep -q '^connected: 500 sessions welcomed' "$out" || fail "not every session was welcomed"
# round lines: id start train acked end starts accept down up cpu ms x
rounds=$(awk '$1 ~ /^[0-9]+$/ && NF >= 12 && $7 >= 45 && $7 <= 50 && $0 !~ /not committed/' "$out" | wc -l)
[ "$rounds" -eq 2 ] || fail "expected 2 committed rounds with 45-50 accepted updates each, got $rounds"
! grep -q 'stopped by a fatal error' "$out" || fail "a session stopped on an error"
echo "PASS: 500 sessions, 2 rounds of 50 sampled nodes committed"
