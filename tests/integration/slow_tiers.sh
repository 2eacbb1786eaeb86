#!/usr/bin/env bash
# Coordinator tiers against a flat federation of the same nodes and seeds,
# with real LoRA training (the lora trainer on a small random-init model:
# dim 32, 2 layers, byte vocabulary, so nats/token = nats/byte; each node
# trains on its own gen-data site shard and evaluates every global version
# on its held-out shard, eval_max_tokens 2048).
#   flat:  1 root + 12 nodes;
#   tiers: 1 root + 3 regions + 12 nodes (4 per region), same seeds.
# ROUNDS (default 6) rounds each, FedAvg at the root, q4 uplink with
# error feedback, q8 downlink. Checks:
#  - both commit every round; every node's verified SHA-256s equal the root's;
#  - learning curve: for every version v = 1..ROUNDS-1, the mean over the
#    12 nodes of the held-out loss of v differs between the two runs by at
#    most TOL (0.005 nats/byte);
#  - bytes at the root: with regions, at most 0.4 x the flat root's bytes in.
# Prints the root's bytes in/out per round and CPU seconds (user+sys over
# the whole run, /usr/bin/time) for both (docs/RESULTS.md, "Fleet scale").
# TIERS_BENCH=1 measures bytes and CPU only, on bench_fleet's adapter
# (LoRA rank 16 on attn_q/attn_v of 16 layers of 1024x1024, 1 M parameters,
# a random q4_0 base) with the synthetic trainer: no learning-curve check.
set -euo pipefail
src=${FEDLORA_SRC:?}
node_bin=${FEDLORA_NODE_BIN:?}
coord_bin=${FEDLORA_COORD_BIN:?}
# shellcheck source=tests/integration/tiers_lib.sh
. "$src/tests/integration/tiers_lib.sh"
ROUNDS=${ROUNDS:-6}
# ROOT_AGG: [aggregation] lines for the root of both runs, e.g.
# ROOT_AGG=$'strategy = fedadam\nserver_lr = 0.01' (regions stay FedAvg).
# SEED (default 1) varies the base model's initialisation, the federation
# seed (sampling, round seeds) and the nodes' seeds (data order)
SEED=${SEED:-1}
[[ "$SEED" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "SEED must be 1..9999"; exit 2; }
tiers_seed=$((6 + SEED))
TOL=${TOL:-0.005}
R=3
PER=4
N=$((R * PER))
top=$(mktemp -d /tmp/fltest-tiers-slow.XXXXXX)
work=$top
trap 'tiers_cleanup; [ "${FEDLORA_KEEP:-0}" = 1 ] || rm -rf "$top"' EXIT
command -v /usr/bin/time >/dev/null || { echo "SKIP: /usr/bin/time is missing"; exit 77; }

bench=${TIERS_BENCH:-0}
trainer=lora
if [ "$bench" = 1 ]; then
	trainer=synth
	tiers_rank=16
	"$node_bin" init-model --out "$top/base.gguf" --dim 1024 --layers 16 --heads 8 --ffn 64 \
		--ctx 64 --type q4_0 --seed 3 >/dev/null
else
	"$node_bin" init-model --out "$top/base.gguf" --dim 32 --layers 2 --heads 2 --ffn 64 \
		--ctx 64 --seed $((2 + SEED)) >/dev/null
fi
sites=(harbor foundry mill plant)
for i in $(seq 1 $N); do
	id=$(printf 'node-%02d' "$i")
	"$node_bin" gen-data --site "${sites[$(((i - 1) % 4))]}" --seed "$i" --lines 400 \
		--eval-lines 60 --out "$top/data/$id" >/dev/null
done

tiers_train="local_steps = 20
lr = 0.003
batch_size = 2
ctx = 32
uplink_format = q4"

# run MODE: MODE flat or tiers, in $top/MODE
run() {
	local mode=$1
	work=$top/$mode
	mkdir -p "$work"
	ln -s "$top/base.gguf" "$work/base.gguf"
	ln -s "$top/data" "$work/data"
	tiers_pki $R $N
	local parts=$N
	[ "$mode" = tiers ] && parts=$R
	tiers_rounds="min_nodes = $parts
min_updates = $parts
deadline_ms = 120000
start_delay_ms = 300
gap_ms = 200
max_rounds = $ROUNDS"
	tiers_coord_conf "$work/conf/root.conf" "$work/root" "$work/pki/coordinator" \
		"tcp://127.0.0.1:*" "${ROOT_AGG:+[aggregation]
$ROOT_AGG}"
	tiers_start root /usr/bin/time -o "$work/root.time" -f "%U %S %M" \
		"$coord_bin" serve --config "$work/conf/root.conf"
	tiers_wait_file "$work/root.endpoint" 20 || tiers_fail "$mode: the root did not start"
	local r i id ep
	if [ "$mode" = tiers ]; then
		tiers_rounds="min_nodes = $PER
min_updates = $PER
deadline_ms = 100000"
		for r in $(seq 1 $R); do
			tiers_coord_conf "$work/conf/region-$r.conf" "$work/region-$r" \
				"$work/pki/regions/region-$r" "tcp://127.0.0.1:*" "[upstream]
endpoint = $(cat "$work/root.endpoint")
cert = $work/pki/regions/region-$r.crt
key = $work/pki/regions/region-$r.key"
			tiers_start "region-$r" /usr/bin/time -o "$work/region-$r.time" -f "%U %S %M" \
				"$coord_bin" serve --config "$work/conf/region-$r.conf"
		done
		for r in $(seq 1 $R); do
			tiers_wait_file "$work/region-$r.endpoint" 20 || tiers_fail "region-$r did not start"
		done
	fi
	for i in $(seq 1 $N); do
		id=$(printf 'node-%02d' "$i")
		ep=$work/root.endpoint
		[ "$mode" = tiers ] && ep=$work/region-$(((i - 1) / PER + 1)).endpoint
		tiers_node_conf "$id" "$ep" "$(((SEED - 1) * 100 + i))" "$trainer"
		OMP_NUM_THREADS=1 tiers_start "$id" "$node_bin" run --config "$work/conf/$id.conf"
	done
	local p
	for p in "${tiers_pids[@]}"; do
		for _ in $(seq 1 6000); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$p" 2>/dev/null && tiers_fail "$mode: a process (pid $p) did not stop"
		wait "$p" || tiers_fail "$mode: a process (pid $p) exited with an error"
	done
	tiers_pids=()
	local c
	c=$(grep -c '"type":"round_end".*"committed":true' "$work/root/journal.jsonl" || true)
	[ "$c" -eq "$ROUNDS" ] || tiers_fail "$mode: the root committed $c of $ROUNDS rounds"
	local metrics=()
	for i in $(seq 1 $N); do metrics+=("$work/$(printf 'node-%02d' "$i")/metrics.jsonl"); done
	local nv
	nv=$(tiers_check_shas "$work/root/journal.jsonl" "${metrics[@]}") ||
		{ echo "$nv"; tiers_fail "$mode: a SHA-256 differs from the root's"; }
	echo "$mode: $ROUNDS rounds committed; $nv versions verified by the $N nodes equal the root's"
}

run flat
run tiers
python3 - "$top" "$N" "$ROUNDS" "$TOL" "$R" "$bench" <<'PY'
import json, sys, glob
top, N, R, tol, regions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
bench = sys.argv[6] == "1"
def curve(mode):
    c = {}
    for i in range(1, N + 1):
        for line in open("%s/%s/node-%02d/metrics.jsonl" % (top, mode, i)):
            r = json.loads(line)
            if r.get("type") == "round" and r.get("eval_loss") is not None:
                c.setdefault(r["base_version"], {})[i] = r["eval_loss"]
    return {v: sum(d.values()) / len(d) for v, d in c.items() if len(d) == N}
def root(mode):
    ends = [json.loads(l) for l in open("%s/%s/root/journal.jsonl" % (top, mode)) if '"round_end"' in l]
    ends = [e for e in ends if "bytes_in" in e]
    u, s, m = open("%s/%s/root.time" % (top, mode)).read().split()[-3:]
    return ends, float(u) + float(s), int(m)
def cpu(mode, name):
    u, s, m = open("%s/%s/%s.time" % (top, mode, name)).read().split()[-3:]
    return float(u) + float(s)
cf, ct = curve("flat"), curve("tiers")
if bench:  # the synthetic trainer: no learning curve to compare
    cf = ct = {v: 0.0 for v in range(R)}
if not bench:
    print("held-out loss (nats/byte), mean of the %d nodes, by global version:" % N)
    print("version  flat      tiers     diff")
worst = 0.0
for v in range(0, R):
    if v not in cf or v not in ct:
        print("version %d: not evaluated by every node in both runs" % v)
        sys.exit(1)
    d = ct[v] - cf[v]
    worst = max(worst, abs(d))
    if not bench:
        print("%7d  %.5f  %.5f  %+.5f" % (v, cf[v], ct[v], d))
if not bench:
    print("learning: flat %.4f -> %.4f, tiers %.4f -> %.4f; largest |diff| %.5f (tolerance %g)"
          % (cf[0], cf[R - 1], ct[0], ct[R - 1], worst, tol))
ef, cpuf, rssf = root("flat")
et, cput, rsst = root("tiers")
bf = sum(e["bytes_in"] for e in ef) / len(ef)
bt = sum(e["bytes_in"] for e in et) / len(et)
of = sum(e["bytes_out"] for e in ef) / len(ef)
ot = sum(e["bytes_out"] for e in et) / len(et)
regcpu = [cpu("tiers", "region-%d" % r) for r in range(1, regions + 1)]
print("root per round: flat %.0f B in, %.0f B out, %.3f CPU s (%.2f s total, max RSS %d KiB); "
      "tiers %.0f B in, %.0f B out, %.3f CPU s (%.2f s total, max RSS %d KiB); regions %.2f CPU s each on average"
      % (bf, of, cpuf / len(ef), cpuf, rssf, bt, ot, cput / len(et), cput, rsst, sum(regcpu) / len(regcpu)))
print("root bytes in, tiers / flat = %.3f (3 uploads instead of %d)" % (bt / bf, N))
ok = worst <= tol and bt <= 0.4 * bf
if not bench and worst <= tol and cf[R - 1] >= cf[0] - 1e-4:
    print("note: the flat run did not learn (%.4f -> %.4f): the comparison is void" % (cf[0], cf[R - 1]))
    ok = False
sys.exit(0 if ok else 1)
PY
if [ "$bench" = 1 ]; then
	echo "ok: bytes and CPU measured (no learning-curve check with TIERS_BENCH=1)"
else
	echo "ok: tiers within $TOL nats/byte of the flat federation over $ROUNDS rounds"
fi
