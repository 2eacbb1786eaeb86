# deploy/rounds-table.awk — the per-round table of a federation run
# (deploy/quickstart.sh, deploy/compose-up.sh).
#
#   awk -v nodes=N -v rounds=R -f deploy/rounds-table.awk JOURNAL METRICS
#
# JOURNAL is the coordinator's journal.jsonl (a file name containing
# "journal"), METRICS every node's metrics.jsonl concatenated (node ids
# node-1, node-01, node-001 ... are node 1). Per round: participants, KiB
# up (and their f32 equivalent), KiB down, each node's held-out loss (nats
# per token) and the round time; then the traffic of both directions
# against f32, the mean held-out loss of the first and last fully evaluated
# rounds, and that of the final version (the nodes' "eval" records). Exit
# status: 0 the federated loss went down, 1 it did not, 2 not enough
# evaluated rounds.
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
  r = num($0, "round"); rt[r] = num($0, "round_ms")
  v = num($0, "version"); if (v > final) final = v
  next
}
FILENAME !~ /journal/ && /"type":"eval"/ {
  nd = str($0, "node"); sub(/^node-0*/, "", nd)
  l = num($0, "eval_loss"); if (l != "") evl[num($0, "version"), nd] = l
  next
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
  kib = 1024
  printf "%5s %5s %8s %9s %9s", "round", "nodes", "up KiB", "(f32 KiB)", "down KiB"
  for (n = 1; n <= nodes; n++) printf " %7s", "loss n" n
  printf " %7s\n", "time s"
  first = ""; last = ""
  for (r = 1; r <= rounds; r++) {
    if (!(r in seen)) continue
    printf "%5d %5d %8.1f %9s %9.1f", r, part[r], up[r] / kib, "(" sprintf("%.1f", f32[r] / kib) ")", down[r] / kib
    tu += up[r]; tf += f32[r]; td += down[r]
    s = 0; c = 0
    for (n = 1; n <= nodes; n++) {
      if ((r, n) in loss) { printf " %7.4f", loss[r, n]; s += loss[r, n]; c++ } else printf " %7s", "-"
    }
    printf " %7.2f\n", rt[r] / 1000
    if (c == nodes) { if (first == "") { first = s / c; fr = r } last = s / c; lr = r }
  }
  printf "\nloss: held-out negative log-likelihood in nats per token of the global version\n"
  printf "each round starts from (round 1: the base with the initial adapter, B = 0), on\n"
  printf "each node's private held-out data; lower is better.\n"
  if (tf > 0)
    printf "traffic: up %.1f KiB = %.1f%% of f32; up + down %.1f KiB = %.1f%% of f32 both ways\n" \
      "(a download counted as large as an upload in f32)\n", tu / kib, 100 * tu / tf, (tu + td) / kib, 100 * (tu + td) / (2 * tf)
  if (final != "") {
    s = 0; c = 0
    for (n = 1; n <= nodes; n++) if ((final, n) in evl) { s += evl[final, n]; c++ }
    if (c) printf "final version %d: mean held-out loss %.4f (evaluated by %d of %d nodes)\n", final, s / c, c, nodes
  }
  if (first == "" || lr == fr) { print "VERDICT: not enough evaluated rounds"; exit 2 }
  printf "mean held-out loss: round %d %.4f -> round %d %.4f\n", fr, first, lr, last
  if (last < first) { print "VERDICT: the federated loss went down"; exit 0 }
  print "VERDICT: the federated loss did NOT go down"; exit 1
}
