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
