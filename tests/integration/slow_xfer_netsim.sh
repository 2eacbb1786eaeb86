#!/usr/bin/env bash
# Issue 17's resumable-transfer test: a 100 MB adapter over a tbf-shaped
# link that flaps twice, in the network-namespace simulator
# (deploy/sim/netsim.sh). One node (synth trainer, shapes from a q4_0 base
# of 28 layers of width 256 (ffn 256), LoRA rank 256 on all 7 targets:
# 25,690,112 parameters, exchanged in f32 both ways, so the RoundStart and
# the Update are each ~102.8 MB) behind a FEDLORA_XFER_RATE (default
# 40mbit) link. The link goes down for 10 s in the middle of the download,
# and again in the middle of the upload. Checks: the round commits (the
# node's Update arrived, its SHA-256 verified by the chunked transfer and
# the coordinator's decoder), the node verified the version it received,
# both transfers resumed (the receiver already held chunks after the flap),
# and each flap cost at most one window (transport.chunk_window x
# chunk_size) of chunk bytes sent again. Prints, per direction: bytes
# re-sent per flap, transfer time against the link rate, and the peak RSS
# of the coordinator and the node. Needs root and `ip netns`; otherwise it
# skips (exit 77). FEDLORA_XFER_LAYERS (default 28) scales the adapter.
# FEDLORA_XFER_THRESHOLD=0 is the comparison run: chunking off, no flaps
# (a flap would restart a whole message), only the round, times and RSS.
set -euo pipefail
src=${FEDLORA_SRC:?}
node_bin=${FEDLORA_NODE_BIN:?}
coord_bin=${FEDLORA_COORD_BIN:?}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces"
command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "ip netns unavailable"
ip netns add flprobe$$ 2>/dev/null || skip "cannot create network namespaces here"
ip netns del flprobe$$

layers=${FEDLORA_XFER_LAYERS:-28}
rank=256
threshold=${FEDLORA_XFER_THRESHOLD:-16MiB}
rate=${FEDLORA_XFER_RATE:-40mbit}
cs=$((256 * 1024))
win=8
work=$(mktemp -d /tmp/fltest.XXXXXX)
prefix="flx$$"
prefix=${prefix:0:8}
trap '[ "${FEDLORA_KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT
t0=$(date +%s)

bash "$src/deploy/certs.sh" init "$work/pki" >/dev/null
bash "$src/deploy/certs.sh" coordinator "$work/pki" --ip 10.213.0.1 >/dev/null
bash "$src/deploy/certs.sh" node "$work/pki" --count 1 >/dev/null
"$node_bin" init-model --out "$work/base.gguf" --dim 256 --layers "$layers" --heads 4 --ffn 256 \
	--ctx 64 --type q4_0 --seed 3 >/dev/null
adapter_bytes=$((layers * 7 * 2 * 256 * rank * 4))

cat >"$work/coordinator.conf" <<CONF
[server]
listen = tcp://10.213.0.1:7777
cert = $work/pki/coordinator.crt
key = $work/pki/coordinator.key
ca = $work/pki/ca.crt
heartbeat_ms = 1000
idle_timeout_ms = 30000
[transport]
chunk_threshold = $threshold
chunk_size = 256KiB
chunk_window = $win
[federation]
base_gguf = $work/base.gguf
[lora]
rank = $rank
alpha = 16
targets = all
[rounds]
min_nodes = 1
min_updates = 1
deadline_ms = 900000
start_delay_ms = 500
gone_grace_ms = 120000
max_rounds = 1
# no final version at the end: a third 100 MB message would only add time
final_timeout_ms = 0
[train]
local_steps = 1
lr = 0.001
batch_size = 1
ctx = 32
uplink_format = f32
uplink_block = 0
error_feedback = false
[aggregation]
downlink_format = f32
downlink_block = 0
[state]
dir = $work/coord-state
CONF
cat >"$work/node-01.conf" <<CONF
[node]
state_dir = $work/node-01
trainer = synth
seed = 1
stop_grace_ms = 2000
[coordinator]
endpoint = tcp://10.213.0.1:7777
[reconnect]
min_ms = 200
max_ms = 2000
[transport]
chunk_threshold = $threshold
chunk_size = 256KiB
chunk_window = $win
[tls]
cert = $work/pki/nodes/node-01.crt
key = $work/pki/nodes/node-01.key
ca = $work/pki/ca.crt
[model]
path = $work/base.gguf
threads = 1
[lora]
rank = $rank
alpha = 16
targets = all
CONF

logs=$work/logs
mkdir -p "$logs"
# The flaps: 5 s after each transfer starts (its first "sending ... bytes"
# line), node 1's link goes down for 10 s (longer than the ZMTP heartbeat
# timeout, so both ends drop the session).
flap_after() { # log pattern label
	for _ in $(seq 1 3000); do
		grep -q "$2" "$1" 2>/dev/null && break
		sleep 0.2
	done
	sleep 5
	echo "test: $3: node 1 link down"
	ip -n "$prefix-br" link set vn1 down 2>/dev/null || true
	sleep 10
	ip -n "$prefix-br" link set vn1 up 2>/dev/null || true
	echo "test: $3: node 1 link up"
}
(
	[ "$threshold" = 0 ] && exit 0
	flap_after "$logs/coordinator.log" "sending [0-9]* bytes to node-01" "download"
	flap_after "$logs/node-01.log" "sending [0-9]* bytes to coordinator" "upload"
) &
flapper=$!
# The process running binary $1 whose command line has $2 (netsim's own
# command line has the config path too).
pid_of() {
	local p exe
	exe=$(readlink -f "$1")
	for p in $(pgrep -f "$2" || true); do
		[ "$(readlink /proc/"$p"/exe 2>/dev/null)" = "$exe" ] && { echo "$p"; return 0; }
	done
	return 0
}
# peak RSS of both processes (VmHWM), sampled until the stop file appears
# (the patterns differ from the leftover check's below, which must not
# match this loop's own pgrep)
(
	c=0 n=0
	while [ ! -e "$work/stop-sampler" ]; do
		cp=$(pid_of "$coord_bin" "config $work/coordinator.conf")
		np=$(pid_of "$node_bin" "config $work/node-01.conf")
		[ -n "$cp" ] && v=$(awk '/VmHWM/{print $2}' /proc/"$cp"/status 2>/dev/null) && [ -n "$v" ] && [ "$v" -gt "$c" ] && c=$v
		[ -n "$np" ] && v=$(awk '/VmHWM/{print $2}' /proc/"$np"/status 2>/dev/null) && [ -n "$v" ] && [ "$v" -gt "$n" ] && n=$v
		echo "$c $n" >"$work/rss"
		sleep 0.5
	done
) &
sampler=$!

rc=0
OMP_NUM_THREADS=1 bash "$src/deploy/sim/netsim.sh" --nodes 1 --rate "$rate" --prefix "$prefix" \
	--timeout 900 --logdir "$logs" \
	--coord-cmd "exec $coord_bin serve --config $work/coordinator.conf" \
	--node-cmd "exec $node_bin run --config $work/node-{i2}.conf" || rc=$?
touch "$work/stop-sampler"
kill "$flapper" 2>/dev/null || true
wait "$flapper" "$sampler" 2>/dev/null || true

show_logs() {
	for l in "$logs"/*.log; do echo "== $l"; grep -E "xfer|error|warn" "$l" | tail -n 20; done >&2
}
[ "$rc" -eq 0 ] || { show_logs; fail "netsim/coordinator exited with $rc"; }
if ip netns list | grep -q "^$prefix-"; then fail "namespaces left: $(ip netns list | grep "^$prefix-")"; fi
if pgrep -f "run --config $work/node-01.conf" >/dev/null ||
	pgrep -f "serve --config $work/coordinator.conf" >/dev/null; then
	fail "fedlora processes left behind"
fi

j=$work/coord-state/journal.jsonl
grep -q '"type":"round_end".*"round":1,.*"committed":true' "$j" ||
	{ show_logs; fail "round 1 did not commit"; }
grep -q '"round":1.*"uploaded":true' "$work/node-01/metrics.jsonl" ||
	{ show_logs; fail "node-01's upload was not accepted"; }

if [ "$threshold" = 0 ]; then
	read -r crss nrss <"$work/rss"
	awk '/round 1: 1 of 1 nodes sampled/{print "round started " $1} /round 1: update from/{print "update accepted " $1}' "$logs/coordinator.log"
	echo "chunking off: peak RSS: coordinator $((crss / 1024)) MiB, node $((nrss / 1024)) MiB (VmHWM)"
	exit 0
fi
# per direction: resumed, bytes re-sent per flap, time against the link rate
rate_bps=$(echo "$rate" | awk '{v=$1+0; if ($1 ~ /gbit/) v*=1e9; else if ($1 ~ /mbit/) v*=1e6; else if ($1 ~ /kbit/) v*=1e3; print v}')
report() { # sender-log receiver-log key peer-name-in-receiver-log dir
	# One large message each way: every chunk byte the sender sent for it
	# (the "cut after X" lines of cut sessions, the "delivered: Y" line of
	# the last one, if its final acknowledgement arrived) against its size
	# as the receiver verified it; the time from the first offer to that
	# verification.
	cat "$1" "$2" | sort | awk -v key="$3" -v from="$4" -v dir="$5" -v cs=$cs -v win=$win \
		-v bps="$rate_bps" '
	function ts(s,  t, a) { # 2026-12-08T02:33:32.547Z -> seconds of the day
		t = substr(s, 12, 12); split(t, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3]
	}
	$0 ~ ("bytes to " key " in [0-9]+ chunks") { if (!start) start = ts($1) }
	# only the first message: later ones (the final version the coordinator
	# sends when the federation ends, docs/COORDINATOR.md) are not counted
	$0 ~ ("bytes to " key " cut after ") && !dn {
		for (i = 1; i <= NF; i++) if ($i == "after") { sent += $(i + 1); if ($(i + 1) > 0) cuts++ }
	}
	$0 ~ ("-byte message to " key " delivered: ") && !dn {
		for (i = 1; i <= NF; i++) if ($i == "delivered:") sent += $(i + 1)
		dn = 1
	}
	$0 ~ ("from " from ": verified") && !size {
		for (i = 1; i <= NF; i++) if ($i == "received") size = $(i + 1)
		end = ts($1)
	}
	END {
		if (!size || !start) { print "NOTDONE"; exit }
		secs = end - start
		re = sent - size
		printf "%s: %d bytes in %.1f s from offer to verified (link alone: %.1f s at %s bit/s, ratio %.2f), %d cut(s) with bytes in flight, %d chunk bytes re-sent (%.0f per cut; window %d x %d = %d)\n", \
			dir, size, secs, size * 8 / bps, bps, secs / (size * 8 / bps), cuts, re, cuts ? re / cuts : 0, win, cs, win * cs
		if (cuts < 1) print "NOFLAP"
		else if (re / cuts > win * cs + 65536) print "TOOMUCH"
	}'
}
down=$(report "$logs/coordinator.log" "$logs/node-01.log" node-01 coordinator download)
up=$(report "$logs/node-01.log" "$logs/coordinator.log" coordinator node-01 upload)
echo "$down"
echo "$up"
for r in "$down" "$up"; do
	case "$r" in
	*NOFLAP*) show_logs; fail "a transfer was not cut by its flap (no resume tested)" ;;
	*TOOMUCH*) show_logs; fail "more than one window re-sent per flap" ;;
	*NOTDONE*) show_logs; fail "a 100 MB transfer did not complete" ;;
	esac
done
grep -q "from coordinator in [0-9]* chunks: [1-9][0-9]* already held" "$logs/node-01.log" ||
	{ show_logs; fail "the download did not resume (the node held no chunks after the flap)"; }
grep -q "from node-01 in [0-9]* chunks: [1-9][0-9]* already held" "$logs/coordinator.log" ||
	{ show_logs; fail "the upload did not resume (the coordinator held no chunks after the flap)"; }
read -r crss nrss <"$work/rss"
echo "peak RSS: coordinator $((crss / 1024)) MiB, node $((nrss / 1024)) MiB (VmHWM; adapter $((adapter_bytes / 1048576)) MiB in f32)"
echo "ok: a $adapter_bytes-byte adapter crossed a $rate link both ways with two flaps; both transfers resumed; $(($(date +%s) - t0)) s in all"
