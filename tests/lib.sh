# shellcheck shell=bash
# Shell helpers shared by the test and benchmark scripts (sourced, not run).

# split_lines FILE TRAIN HELD: the first 95 % of FILE's lines to TRAIN, the
# rest to HELD (the held-out split every script scores on).
split_lines() {
  local n k
  n=$(wc -l <"$1")
  k=$((n * 95 / 100))
  head -n "$k" "$1" >"$2"
  tail -n +"$((k + 1))" "$1" >"$3"
}
