#!/usr/bin/env bash
# The network-namespace simulator with an uneven, asynchronous fleet:
# aggregation.mode = async (K = 2, staleness (1+s)^-1/2) over mutual TLS,
# 6 nodes behind 10 Mbit/s links, nodes 3-6 slow devices (--slowdown 5:
# train.slowdown = 5), node 5 behind a 1 Mbit/s link (--node-rate), node 6
# online 3 s / offline 9 s in turns (--avail; its session expires while
# offline, after idle_timeout_ms = 3 s). rounds.min_nodes = 6, so tasks
# pause while node 6's session is gone and the federation cannot finish
# before it has come back, however fast the machine (at 150 versions a fast
# machine finished before node 6's first offline turn ended). Checks: 400
# versions commit; the slow nodes' updates are in
# committed versions with exactly their staleness weight; node 6 joined
# again after being offline and its updates still count; nothing is left
# behind. Needs root and `ip netns`; otherwise it skips (exit 77).
set -euo pipefail
src=${FEDLORA_SRC:?}
node_bin=${FEDLORA_NODE_BIN:?}
coord_bin=${FEDLORA_COORD_BIN:?}
# shellcheck source=tests/integration/netsim_lib.sh
. "$src/tests/integration/netsim_lib.sh"
netsim_require

work=$(mktemp -d /tmp/fltest.XXXXXX)
prefix="fla$$"
prefix=${prefix:0:8}
nodes=6
trap '[ "${FEDLORA_KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT

netsim_fleet "$src" "$work" "$nodes"

cat >"$work/coordinator.conf" <<CONF
[server]
listen = tcp://10.213.0.1:7777
cert = $work/pki/coordinator.crt
key = $work/pki/coordinator.key
ca = $work/pki/ca.crt
heartbeat_ms = 1000
idle_timeout_ms = 3000
[federation]
base_gguf = $work/base.gguf
[lora]
rank = 4
alpha = 8
targets = attn_q,attn_v
[rounds]
min_nodes = 6
deadline_ms = 120000
gone_grace_ms = 3000
max_rounds = 400
[train]
local_steps = 30
lr = 0.003
batch_size = 2
ctx = 32
uplink_format = q4
[aggregation]
mode = async
buffer_size = 2
staleness = polynomial
staleness_exponent = 0.5
max_staleness = 100
[state]
dir = $work/coord-state
CONF
for i in $(seq 1 $nodes); do
	id=$(printf 'node-%02d' "$i")
	netsim_node_conf "$work" "$id" "$i" "eval = false" ""
done

rc=0
OMP_NUM_THREADS=1 bash "$src/deploy/sim/netsim.sh" --nodes $nodes --rate 10mbit --prefix "$prefix" \
	--timeout 900 --logdir "$work/logs" \
	--slowdown 3:5 --slowdown 4:5 --slowdown 5:5 --slowdown 6:5 --node-rate 5:1mbit \
	--avail 6:3:9 \
	--coord-cmd "exec $coord_bin serve --config $work/coordinator.conf" \
	--node-cmd "exec $node_bin run --config $work/node-{i2}.conf --train.slowdown={slowdown}" || rc=$?

show_logs() {
	for l in "$work"/logs/*.log; do echo "== $l"; tail -n 12 "$l"; done >&2
}
[ "$rc" -eq 0 ] || { show_logs; fail "netsim/coordinator exited with $rc"; }

# nothing left behind
if ip netns list | grep -q "^$prefix-"; then fail "namespaces left: $(ip netns list | grep "^$prefix-")"; fi
if ip link | grep -q "${prefix}"; then fail "veth interfaces left behind"; fi
if pgrep -f "$work/node-[0-9]" >/dev/null || pgrep -f "$work/coordinator.conf" >/dev/null; then
	fail "fedlora processes left behind"
fi

j=$work/coord-state/journal.jsonl
committed=$(grep -c '"type":"round_end".*"committed":true' "$j" || true)
[ "$committed" -eq 400 ] || { show_logs; fail "$committed of 400 versions committed"; }
# the slow nodes' updates are in committed versions, each with (1+s)^-1/2
python3 - "$j" <<'PY' || { show_logs; fail "staleness weights in the journal"; }
import json, sys
slow, stale, bad, n6 = 0, 0, 0, 0
for line in open(sys.argv[1]):
    o = json.loads(line)
    if o.get("type") != "round_end" or not o.get("committed"):
        continue
    for u in o.get("updates", []):
        s, f = u["staleness"], u["factor"]
        if abs(f - (1 + s) ** -0.5) > 1e-12:
            bad += 1
        if u["node"] in ("node-03", "node-04", "node-05", "node-06"):
            slow += 1
            stale += s >= 1
        n6 += u["node"] == "node-06"
print(f"slow-node updates in versions: {slow} ({stale} stale), node-06: {n6}, bad weights: {bad}")
sys.exit(0 if slow >= 2 and stale >= 1 and bad == 0 else 1)
PY
joins=$(grep -c 'node node-06 joined' "$work/logs/coordinator.log" || true)
[ "$joins" -ge 2 ] || { show_logs; fail "node-06 joined $joins time(s); its offline turns should have cost it its session"; }
echo "ok: 400 async versions over uneven links and devices; node-06 went offline and joined again ($joins joins); nothing left behind"
