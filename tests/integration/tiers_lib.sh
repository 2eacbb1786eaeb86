# shellcheck shell=bash
# Helpers of the coordinator-tier tests (test_tiers.sh, slow_tiers.sh):
# a root, regions and nodes as real processes over mutual TLS on loopback,
# certificates from deploy/certs.sh. Sourced, not run. The caller sets
# src, node_bin, coord_bin and work, and calls tiers_cleanup on exit.
#
# Layout under $work: pki/, base.gguf, data/<node>/, root/ (state),
# <region>/ (state), <node>/ (state), conf/*.conf, logs/*.log.

tiers_pids=()

tiers_fail() {
	echo "FAIL: $*" >&2
	for l in "$work"/logs/*.log; do
		[ -f "$l" ] && { echo "== $l"; tail -n 15 "$l"; } >&2
	done
	exit 1
}

tiers_cleanup() {
	local p
	for p in "${tiers_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${tiers_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# tiers_pki NREGIONS NODES: CA, root certificate, one region certificate
# per region (serverAuth + clientAuth), NODES node certificates.
tiers_pki() {
	bash "$src/deploy/certs.sh" init "$work/pki" >/dev/null
	bash "$src/deploy/certs.sh" coordinator "$work/pki" --ip 127.0.0.1 >/dev/null
	local r
	for r in $(seq 1 "$1"); do
		bash "$src/deploy/certs.sh" region "$work/pki" "region-$r" --ip 127.0.0.1 >/dev/null
	done
	bash "$src/deploy/certs.sh" node "$work/pki" --count "$2" >/dev/null
	mkdir -p "$work/conf" "$work/logs"
}

# tiers_coord_conf FILE STATE_DIR CERT_BASE LISTEN EXTRA: a coordinator
# configuration; EXTRA (INI text) goes at the end (sections of its own).
# Uses the globals tiers_rounds (INI text of [rounds] keys) and tiers_train
# ([train] keys); the federation, adapter and aggregation are shared.
tiers_coord_conf() {
	cat >"$1" <<CONF
[server]
listen = $4
endpoint_file = $2.endpoint
cert = $3.crt
key = $3.key
ca = $work/pki/ca.crt
heartbeat_ms = 1000
idle_timeout_ms = 8000
[federation]
base_gguf = $work/base.gguf
seed = ${tiers_seed:-7}
[lora]
rank = ${tiers_rank:-4}
alpha = 8
targets = attn_q,attn_v
[rounds]
$tiers_rounds
[train]
$tiers_train
[state]
dir = $2
$5
CONF
}

# tiers_node_conf ID ENDPOINT_FILE SEED TRAINER
tiers_node_conf() {
	local id=$1
	cat >"$work/conf/$id.conf" <<CONF
[node]
state_dir = $work/$id
seed = $3
trainer = $4
[coordinator]
endpoint = $(cat "$2")
[reconnect]
min_ms = 200
max_ms = 1000
[tls]
cert = $work/pki/nodes/$id.crt
key = $work/pki/nodes/$id.key
ca = $work/pki/ca.crt
[model]
path = $work/base.gguf
threads = 1
[data]
train = $work/data/$id/train.txt
eval = $work/data/$id/eval.txt
eval_max_tokens = 2048
[lora]
rank = ${tiers_rank:-4}
alpha = 8
targets = attn_q,attn_v
CONF
}

# tiers_start NAME CMD...: starts a process logging to logs/NAME.log and
# records its pid in tiers_pid_NAME (dashes become underscores).
tiers_start() {
	local name=$1
	shift
	"$@" >>"$work/logs/$name.log" 2>&1 &
	local p=$!
	tiers_pids+=("$p")
	printf -v "tiers_pid_${name//-/_}" '%s' "$p"
}

# tiers_wait_file FILE SECONDS
tiers_wait_file() {
	local i
	for i in $(seq 1 $(($2 * 10))); do
		[ -s "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

# tiers_wait_grep PATTERN FILE SECONDS
tiers_wait_grep() {
	local i
	for i in $(seq 1 $(($3 * 10))); do
		grep -q -- "$1" "$2" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# tiers_check_shas ROOT_JOURNAL METRICS...: every "global" line of each
# node's metrics.jsonl names a version the root committed (or v0) with the
# root's SHA-256; prints how many versions were checked.
tiers_check_shas() {
	python3 - "$@" <<'PY'
import json, sys
root = {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("type") == "round_end" and r.get("committed"):
        root[r["version"]] = r["sha256"]
checked, bad = 0, []
for path in sys.argv[2:]:
    seen = 0
    for line in open(path):
        r = json.loads(line)
        if r.get("type") != "global" or r["version"] == 0:
            continue
        v = r["version"]
        if root.get(v) != r["sha256"]:
            bad.append("%s: version %d sha %s, root %s" % (path, v, r["sha256"][:16], root.get(v, "none")[:16]))
        seen += 1
    checked += seen
    if not seen:
        bad.append("%s: no version past v0 received" % path)
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(checked)
PY
}
