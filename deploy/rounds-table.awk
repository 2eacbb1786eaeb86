# deploy/rounds-table.awk — the per-round table of a federation run
# (deploy/quickstart.sh, deploy/compose-up.sh).
#
#   awk -v nodes=N -v rounds=R -f deploy/rounds-table.awk JOURNAL METRICS
#
# JOURNAL is the coordinator's journal.jsonl (a file name containing
# "journal"), METRICS every node's metrics.jsonl concatenated (node ids
# node-1, node-01, node-001 ... are node 1). Per round: participants, bytes
# up (and their f32 equivalent), bytes down, each node's held-out loss and
# the round time; then the mean held-out loss of the first and last fully
# evaluated rounds. Exit status: 0 the federated loss went down, 1 it did
# not, 2 not enough evaluated rounds.
function num(line, key,   m) {
  if (match(line, "\"" key "\":-?[0-9.eE+]+")) {
    m = substr(line, RSTART, RLENGTH); sub(/^"[^"]*":/, "", m); return m + 0
  }
  return ""
}
function str(line, key,   m) {
  if (match(line, "\"" key "\":\"[^\"]*\"")) {
    m = substr(line, RSTART, RLENGTH); sub(/^"[^"]*":"/, "", m); sub(/"$/, "", m); return m
  }
  return ""
}
FILENAME ~ /journal/ && /"type":"round_end"/ && /"committed":true/ && !/"recovered"/ {
  r = num($0, "round"); rt[r] = num($0, "round_ms"); next
}
FILENAME !~ /journal/ && /"type":"round"/ {
  r = num($0, "round"); nd = str($0, "node"); sub(/^node-0*/, "", nd)
  if (num($0, "participants") > part[r]) part[r] = num($0, "participants")
  up[r] += num($0, "bytes_up"); f32[r] += num($0, "bytes_up_fp32")
  down[r] += num($0, "bytes_down")
  l = num($0, "eval_loss"); if (l != "") { loss[r, nd] = l }
  seen[r] = 1
}
END {
  printf "%-5s %-5s %12s %13s %6s %12s", "round", "nodes", "bytes up", "f32 would be", "ratio", "bytes down"
  for (n = 1; n <= nodes; n++) printf "  loss n%d", n
  printf "  %9s\n", "time"
  first = ""; last = ""
  for (r = 1; r <= rounds; r++) {
    if (!(r in seen)) continue
    printf "%-5d %-5d %12d %13d %5.1f%% %12d", r, part[r], up[r], f32[r], f32[r] ? 100 * up[r] / f32[r] : 0, down[r]
    s = 0; c = 0
    for (n = 1; n <= nodes; n++) {
      if ((r, n) in loss) { printf "  %7.4f", loss[r, n]; s += loss[r, n]; c++ } else printf "  %7s", "-"
    }
    printf "  %8.2fs\n", rt[r] / 1000
    if (c == nodes) { if (first == "") { first = s / c; fr = r } last = s / c; lr = r }
  }
  printf "\nheld-out loss: the loss of the global version each round starts from (round 1: the\n"
  printf "base model with the initial adapter, B = 0), on each node's private held-out data.\n"
  if (first == "" || lr == fr) { print "VERDICT: not enough evaluated rounds"; exit 2 }
  printf "mean held-out loss: round %d %.4f -> round %d %.4f\n", fr, first, lr, last
  if (last < first) { print "VERDICT: the federated loss went down"; exit 0 }
  print "VERDICT: the federated loss did NOT go down"; exit 1
}