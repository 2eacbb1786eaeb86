#!/usr/bin/env bash
# Coordinator tiers (docs/COORDINATOR.md, "Tiers"), real processes over
# mutual TLS on loopback: 1 root + 3 regions (fedlora-coordinator serve
# with [upstream]) + 12 nodes (4 per region, synthetic trainer), 4 root
# rounds. Region 3 kills itself (SIGKILL, FEDLORA_TEST_KILL_ON_FORWARD)
# in root round 2 after collecting its nodes' updates, before forwarding;
# the test restarts it on the same endpoint and state.
# After root round 3 the root itself is SIGKILLed and restarted (same
# endpoint and state) with 2 more rounds to run.
# Checks:
#  - the root commits 5 rounds; round 2 from regions 1 and 2 only
#    (min_updates 2), and region 3 takes part again afterwards;
#  - while the root is away the regions stay up and say so; after its
#    restart both rounds commit with all three regions;
#  - every node and every region holds the root's versions: each SHA-256 a
#    node verified equals the root's for that version;
#  - bytes at the root scale with regions, not nodes: the root receives one
#    node-sized upload per region per round (within 25 %), and over the
#    rounds at most 0.4 x the update bytes the regions received from
#    their 12 nodes (1/4 expected: 3 uploads, not 12);
#  - everything stops by itself (the root's max_rounds: Bye "federation
#    finished" flows down through the regions to the nodes), exit 0;
#  - check-config refuses secure, DP and non-FedAvg regions naming both
#    keys; a root with privacy.mode = central refuses a region at Join (the
#    region exits 1 and says why).
set -euo pipefail
src=${FEDLORA_SRC:?}
node_bin=${FEDLORA_NODE_BIN:?}
coord_bin=${FEDLORA_COORD_BIN:?}
# shellcheck source=tests/integration/tiers_lib.sh
. "$src/tests/integration/tiers_lib.sh"
work=$(mktemp -d /tmp/fltest-tiers.XXXXXX)
trap 'tiers_cleanup; [ "${FEDLORA_KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT

R=3
PER=4
N=$((R * PER))
tiers_pki $R $N
"$node_bin" init-model --out "$work/base.gguf" --dim 32 --layers 2 --heads 2 --ffn 64 --ctx 64 \
	--seed 3 >/dev/null

tiers_train="local_steps = 5
lr = 0.05
batch_size = 4
ctx = 32
uplink_format = q4"
# root: its participants are the 3 regions
tiers_rounds="min_nodes = $R
min_updates = 2
deadline_ms = 30000
start_delay_ms = 300
gap_ms = 300
gone_grace_ms = 1000
max_rounds = 4"
tiers_coord_conf "$work/conf/root.conf" "$work/root" "$work/pki/coordinator" "tcp://127.0.0.1:*" ""
tiers_start root "$coord_bin" serve --config "$work/conf/root.conf"
tiers_wait_file "$work/root.endpoint" 20 || tiers_fail "the root did not start"
root_ep=$(cat "$work/root.endpoint")

# regions: rounds.deadline_ms caps the regional round; it is also cut to
# the root's remaining time minus upstream.margin_ms
tiers_rounds="min_nodes = $PER
min_updates = 2
deadline_ms = 20000
gone_grace_ms = 1000"
for r in $(seq 1 $R); do
	tiers_coord_conf "$work/conf/region-$r.conf" "$work/region-$r" "$work/pki/regions/region-$r" \
		"tcp://127.0.0.1:*" "[upstream]
endpoint = $root_ep
cert = $work/pki/regions/region-$r.crt
key = $work/pki/regions/region-$r.key
margin_ms = 3000
reconnect_min_ms = 200
reconnect_max_ms = 1000"
done
"$coord_bin" check-config --config "$work/conf/region-1.conf" >/dev/null ||
	tiers_fail "check-config refuses a region's configuration"
# what does not compose with a region is refused, naming both keys
refuse() { # refuse KEY=VALUE WORDS...: check-config exits 2 naming KEY and upstream.endpoint
	local kv=$1 out rc=0
	out=$("$coord_bin" check-config --config "$work/conf/region-1.conf" "--$kv" 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || tiers_fail "check-config --$kv with an upstream exited $rc, not 2"
	echo "$out" | grep -q "${kv%%=*}" && echo "$out" | grep -q "upstream.endpoint" ||
		tiers_fail "check-config --$kv: the message does not name both keys: $out"
}
refuse aggregation.secure=true
refuse privacy.mode=central
refuse aggregation.strategy=fedadam
refuse aggregation.weighting=uniform
refuse aggregation.server_lr=0.5
for r in 1 2; do
	tiers_start "region-$r" "$coord_bin" serve --config "$work/conf/region-$r.conf"
done
FEDLORA_TEST_KILL_ON_FORWARD=2 tiers_start region-3 "$coord_bin" serve \
	--config "$work/conf/region-3.conf"
for r in $(seq 1 $R); do
	tiers_wait_file "$work/region-$r.endpoint" 20 || tiers_fail "region-$r did not start"
done
for i in $(seq 1 $N); do
	id=$(printf 'node-%02d' "$i")
	r=$(((i - 1) / PER + 1))
	tiers_node_conf "$id" "$work/region-$r.endpoint" "$i" synth
	tiers_start "$id" "$node_bin" run --config "$work/conf/$id.conf"
done

# region 3 dies in root round 2; it comes back on the same endpoint (its
# nodes reconnect) and state directory
for _ in $(seq 1 600); do
	kill -0 "$tiers_pid_region_3" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$tiers_pid_region_3" 2>/dev/null && tiers_fail "region-3 did not die in root round 2"
killed=$tiers_pid_region_3
grep -q 'FEDLORA_TEST_KILL_ON_FORWARD' "$work/logs/region-3.log" ||
	tiers_fail "region-3 died, but not from the test hook"
echo "test: region-3 killed (SIGKILL) in root round 2"
# the root commits round 2 from the other two once region-3 has been gone
# for rounds.gone_grace_ms; then region-3 comes back
tiers_wait_grep '"type":"round_end","round":2,' "$work/root/journal.jsonl" 60 ||
	tiers_fail "the root did not end round 2 without region-3"
echo "test: root round 2 ended; restarting region-3"
tiers_start region-3 "$coord_bin" serve --config "$work/conf/region-3.conf" \
	"--server.listen=$(cat "$work/region-3.endpoint")"

# the root goes away (SIGKILL) once round 3 has committed: the regions keep
# their nodes and reconnect with back-off; the root comes back on the same
# endpoint and state directory and runs 2 more rounds (max_rounds counts
# this process's rounds), with all three regions
tiers_wait_grep '"type":"round_end","round":3,"committed":true' "$work/root/journal.jsonl" 60 ||
	tiers_fail "root round 3 did not commit"
kill -KILL "$tiers_pid_root"
wait "$tiers_pid_root" 2>/dev/null || true
killed_root=$tiers_pid_root
echo "test: root killed (SIGKILL) after round 3"
for r in $(seq 1 $R); do
	tiers_wait_grep 'lost the root' "$work/logs/region-$r.log" 20 ||
		tiers_fail "region-$r did not notice the root was gone"
done
sleep 1
for p in "$tiers_pid_region_1" "$tiers_pid_region_2" "$tiers_pid_region_3"; do
	kill -0 "$p" 2>/dev/null || tiers_fail "a region stopped while the root was away"
done
tiers_start root "$coord_bin" serve --config "$work/conf/root.conf" "--server.listen=$root_ep" \
	--rounds.max_rounds=2
echo "test: root restarted"

# everything stops by itself after the restarted root's 2 rounds
for p in "${tiers_pids[@]}"; do
	for _ in $(seq 1 900); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$p" 2>/dev/null && tiers_fail "a process (pid $p) did not stop after the last round"
	[ "$p" = "$killed" ] || [ "$p" = "$killed_root" ] && continue
	# exit 0 for all the others (sanitizer builds: no error, no leak)
	wait "$p" || tiers_fail "a process (pid $p) exited with status $?"
done
tiers_pids=()

# regions 1 and 2 kept their nodes through both outages: each node joined once
for r in 1 2; do
	joins=$(grep -c 'node node-[0-9]* joined' "$work/logs/region-$r.log" || true)
	[ "$joins" -eq $PER ] || tiers_fail "region-$r saw $joins joins, not $PER: it lost nodes"
done
j=$work/root/journal.jsonl
committed=$(grep -c '"type":"round_end".*"committed":true' "$j" || true)
[ "$committed" -eq 5 ] || tiers_fail "the root committed $committed of 5 rounds (3 + 2 after its restart)"
python3 - "$j" <<'PY' || tiers_fail "round 2 / rejoin check"
import json, sys
ends = [json.loads(l) for l in open(sys.argv[1]) if '"round_end"' in l]
by = {e["round"]: e for e in ends}
r2 = by[2]
assert r2["committed"] and sorted(r2["accepted"]) == ["region-1", "region-2"], r2
later = [e for e in ends if e["round"] > 2 and "region-3" in e["accepted"]]
assert later, "region-3 never took part again after its restart"
print("round 2 committed from %s; region-3 back in round %d" % (r2["accepted"], later[0]["round"]))
after = [e for e in ends if e["round"] > 3 and e.get("committed")]
assert len(after) == 2 and all(sorted(e["accepted"]) == ["region-1", "region-2", "region-3"] for e in after), after
print("after the root's restart: rounds %s committed from all 3 regions" % [e["round"] for e in after])
PY
metrics=()
for i in $(seq 1 $N); do metrics+=("$work/$(printf 'node-%02d' "$i")/metrics.jsonl"); done
for r in $(seq 1 $R); do metrics+=("$work/region-$r/upstream/metrics.jsonl"); done
nv=$(tiers_check_shas "$j" "${metrics[@]}") || { echo "$nv"; tiers_fail "a SHA-256 differs from the root's"; }
echo "sha256: $nv versions verified by ${#metrics[@]} nodes and regions equal the root's"

python3 - "$work" "$R" <<'PY' || tiers_fail "bytes at the root do not scale with regions"
import json, sys, glob
work, R = sys.argv[1], int(sys.argv[2])
def ends(p):
    return [r for r in (json.loads(l) for l in open(p) if '"round_end"' in l) if "bytes_in" in r]
root = ends(work + "/root/journal.jsonl")
root_in = sum(e["bytes_in"] for e in root)
root_up = sum(len(e["accepted"]) for e in root)
reg_in = reg_up = 0
for r in range(1, R + 1):
    for e in ends("%s/region-%d/journal.jsonl" % (work, r)):
        reg_in += e["bytes_in"]
        reg_up += len(e["accepted"])
per_region = root_in / root_up
per_node = reg_in / reg_up
ratio = root_in / reg_in
print("root: %d bytes in, %d uploads (%.0f B each); regions: %d bytes in from %d node uploads "
      "(%.0f B each); root/regions = %.3f" % (root_in, root_up, per_region, reg_in, reg_up, per_node, ratio))
for e in root:
    print("  root round %d: %d bytes in from %d regions" % (e["round"], e["bytes_in"], len(e["accepted"])))
assert 0.8 <= per_region / per_node <= 1.25, "a region's upload is not one node-sized update"
assert ratio <= 0.4, "the root received more than 0.4 x what the regions received"
full = [e for e in root if len(e["accepted"]) == R]
assert full and all(e["bytes_in"] <= (R + 1) * per_node for e in full), \
    "a round with all regions brought more than %d node-sized uploads to the root" % (R + 1)
PY

# a root with differential privacy refuses a region at Join (it would count
# and clip regions, not nodes): the region stops with exit 1, naming both
tiers_rounds="min_nodes = 1
nodes_per_round = 1
deadline_ms = 30000
max_rounds = 1"
tiers_coord_conf "$work/conf/dp-root.conf" "$work/dp-root" "$work/pki/coordinator" \
	"tcp://127.0.0.1:*" "[privacy]
mode = central
clip = 1.0
noise_multiplier = 1.0
target_epsilon = 10
population = 100
[aggregation]
weighting = uniform"
tiers_start dp-root "$coord_bin" serve --config "$work/conf/dp-root.conf"
tiers_wait_file "$work/dp-root.endpoint" 20 || tiers_fail "the DP root did not start"
rc=0
timeout 60 "$coord_bin" serve --config "$work/conf/region-1.conf" \
	"--upstream.endpoint=$(cat "$work/dp-root.endpoint")" "--state.dir=$work/dp-region" \
	>"$work/logs/dp-region.log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || tiers_fail "a region joining a DP root exited $rc, not 1"
grep -q 'privacy.mode = central' "$work/logs/dp-region.log" &&
	grep -q 'upstream.endpoint' "$work/logs/dp-region.log" ||
	tiers_fail "the region's log does not say why the DP root refused it"
kill -TERM "$tiers_pid_dp_root"
wait "$tiers_pid_dp_root" || tiers_fail "the DP root did not stop cleanly"
tiers_pids=()
echo "ok: a root with privacy.mode = central refuses a region at Join; the region exits 1"
echo "ok: 1 root + $R regions + $N nodes: 5 rounds committed, region-3 killed in round 2 and back, root killed and back, versions exact"
