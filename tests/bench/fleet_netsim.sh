#!/usr/bin/env bash
# fleet_netsim.sh — as many real `fedlora-node run` processes as the machine
# holds, each in its own network namespace behind a tbf-shaped link
# (deploy/sim/netsim.sh), with one real coordinator, mutual TLS, and real
# rounds. A benchmark (not run by ctest): it reports the time until every
# node has joined, each round's time and bytes, and the resident memory of
# the node processes and of the coordinator.
#
# usage (as root): tests/bench/fleet_netsim.sh [NODES] [PER_ROUND] [ROUNDS]
#   defaults 500 nodes, 100 sampled per round, 3 rounds; BUILD=build folder
#   (default ./build), RATE=link rate (default 20mbit), KEEP=1 keeps files.
# Nodes run the synthetic trainer (node/trainer_synth.c) on the adapter of
# a tiny base model, so what is measured is the federation, not training.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD:-$here/build}
node_bin=$build/fedlora-node
coord_bin=$build/fedlora-coordinator
nodes=${1:-500} per=${2:-100} rounds=${3:-3} rate=${RATE:-20mbit}
die() { echo "fleet_netsim: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
[ -x "$node_bin" ] && [ -x "$coord_bin" ] || die "build first ($build)"
[ "$per" -le "$nodes" ] || die "PER_ROUND must be <= NODES"
work=$(mktemp -d /tmp/fleet-netsim.XXXXXX)
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT
t0=$(date +%s.%N)
bash "$here/deploy/certs.sh" init "$work/pki" >/dev/null
bash "$here/deploy/certs.sh" coordinator "$work/pki" --ip 10.213.0.1 >/dev/null
bash "$here/deploy/certs.sh" node "$work/pki" --count "$nodes" >/dev/null
"$node_bin" init-model --out "$work/base.gguf" --dim 64 --layers 2 --heads 2 --ffn 128 \
	--ctx 64 --seed 3 >/dev/null
w=${#nodes}; [ "$w" -lt 2 ] && w=2
cat >"$work/coordinator.conf" <<CONF
[server]
listen = tcp://10.213.0.1:7777
cert = $work/pki/coordinator.crt
key = $work/pki/coordinator.key
ca = $work/pki/ca.crt
[federation]
base_gguf = $work/base.gguf
[lora]
rank = 8
alpha = 16
targets = attn_q,attn_v
[rounds]
min_nodes = $nodes
nodes_per_round = $per
min_updates = $per
deadline_ms = 300000
start_delay_ms = 2000
gap_ms = 1000
max_rounds = $rounds
[train]
local_steps = 5
lr = 0.02
uplink_format = q4
[state]
dir = $work/coord-state
CONF
for i in $(seq 1 "$nodes"); do
	id=$(printf "node-%0${w}d" "$i")
	cat >"$work/$id.conf" <<CONF
[node]
state_dir = $work/$id
seed = $i
trainer = synth
[coordinator]
endpoint = tcp://10.213.0.1:7777
[reconnect]
min_ms = 500
max_ms = 10000
[tls]
cert = $work/pki/nodes/$id.crt
key = $work/pki/nodes/$id.key
ca = $work/pki/ca.crt
[model]
path = $work/base.gguf
threads = 1
[lora]
rank = 8
alpha = 16
targets = attn_q,attn_v
CONF
done
echo "fleet_netsim: $nodes nodes, $per per round, $rounds rounds, links $rate; set up in" \
	"$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"

# memory sampler: the sum of the node processes' RSS once all have joined
(
	j=$work/coord-state/journal.jsonl
	for _ in $(seq 1 6000); do
		[ -f "$j" ] && grep -q '"type":"round_start"' "$j" && break
		sleep 0.2
	done
	pids=$(pgrep -f "^$node_bin run --config $work/node-" || true)
	n=0 kb=0
	for p in $pids; do
		r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
		kb=$((kb + ${r:-0})); n=$((n + 1))
	done
	c=$(pgrep -f "^$coord_bin serve --config $work/coordinator.conf" | head -1)
	ckb=$(awk '/^VmRSS:/ {print $2}' "/proc/$c/status" 2>/dev/null || echo 0)
	echo "memory at the first round: $n node processes, $((kb / 1024)) MiB RSS in all," \
		"$((kb / (n > 0 ? n : 1))) KiB each; coordinator $((ckb / 1024)) MiB" >"$work/memory.txt"
) &
sampler=$!
t1=$(date +%s.%N)
rc=0
OMP_NUM_THREADS=1 bash "$here/deploy/sim/netsim.sh" --nodes "$nodes" --rate "$rate" \
	--timeout 1800 --logdir "$work/logs" \
	--coord-cmd "exec $coord_bin serve --config $work/coordinator.conf" \
	--node-cmd "exec $node_bin run --config $work/node-{i2}.conf" || rc=$?
wait "$sampler" 2>/dev/null || true
echo "fleet_netsim: netsim exited $rc after $(awk -v a="$t1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"
j=$work/coord-state/journal.jsonl
[ -f "$work/memory.txt" ] && cat "$work/memory.txt"
joined=$(grep -c 'joined' "$work/logs/coordinator.log" || true)
echo "joins logged by the coordinator: $joined"
python3 - "$j" <<'PY'
import json, sys
print("round  committed  participants  round_s  MB_in  MB_out")
for line in open(sys.argv[1]):
    o = json.loads(line)
    if o.get("type") != "round_end":
        continue
    t = o.get("timings", {})
    ms = t.get("round_ms", o.get("round_ms", 0))
    print("%-6s %-10s %-13s %-8.1f %-6.1f %.1f" % (o["round"], o["committed"],
          len(o.get("participants", [])), ms / 1000.0, o.get("bytes_in", 0) / 1e6,
          o.get("bytes_out", 0) / 1e6))
PY
[ "$rc" -eq 0 ] || die "netsim exited $rc (logs in $work/logs; KEEP=1 keeps them)"
