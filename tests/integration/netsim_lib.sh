# shellcheck shell=bash
# netsim_lib.sh — shared by the network-simulator tests (sourced, not a
# test: only test_*.sh and slow_*.sh are registered). Needs $node_bin.
skip() {
	echo "SKIP: $*"
	exit 77
}
fail() {
	echo "FAIL: $*" >&2
	exit 1
}
# Skips (exit 77) unless this process may create network namespaces.
netsim_require() {
	[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces"
	command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "ip netns unavailable"
	ip netns add flprobe$$ 2>/dev/null || skip "cannot create network namespaces here"
	ip netns del flprobe$$
}
# netsim_fleet SRC WORK NODES: a PKI (coordinator at 10.213.0.1, NODES
# node certificates), a tiny base model WORK/base.gguf and one synthetic
# shard per node in WORK/data/node-NN.
netsim_fleet() {
	local src=$1 work=$2 nodes=$3 i id sites=(harbor foundry mill plant)
	bash "$src/deploy/certs.sh" init "$work/pki" >/dev/null
	bash "$src/deploy/certs.sh" coordinator "$work/pki" --ip 10.213.0.1 >/dev/null
	bash "$src/deploy/certs.sh" node "$work/pki" --count "$nodes" >/dev/null
	"$node_bin" init-model --out "$work/base.gguf" --dim 32 --layers 2 --heads 2 --ffn 64 \
		--ctx 64 --seed 3 >/dev/null
	for i in $(seq 1 "$nodes"); do
		id=$(printf 'node-%02d' "$i")
		"$node_bin" gen-data --site "${sites[$(((i - 1) % 4))]}" --seed "$i" --lines 400 \
			--eval-lines 60 --out "$work/data/$id" >/dev/null
	done
}
# netsim_node_conf WORK ID SEED [NODE_EXTRA] [DATA_EXTRA]: WORK/ID.conf for
# a node of netsim_fleet's federation (coordinator 10.213.0.1:7777, its
# certificate, shard and the LoRA spec rank 4 on attn_q/attn_v); the
# extras are lines added to [node] and [data].
netsim_node_conf() {
	local work=$1 id=$2 seed=$3 node_extra=${4:-} data_extra=${5:-}
	cat >"$work/$id.conf" <<CONF
[node]
state_dir = $work/$id
seed = $seed
$node_extra
[coordinator]
endpoint = tcp://10.213.0.1:7777
[reconnect]
min_ms = 200
max_ms = 2000
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
$data_extra
[lora]
rank = 4
alpha = 8
targets = attn_q,attn_v
CONF
}
