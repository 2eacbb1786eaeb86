#!/usr/bin/env bash
# One LoRA spec for both binaries (common/lora.h, docs/FORMATS.md section 4):
# the coordinator accepts `lora.targets = all`, both binaries accept every
# bound of the range table, and both refuse the same out-of-range values
# with the same sentence, whether the value comes from the file, the
# environment or a flag. The coordinator is asked with `check-config`; the
# node with `run` (the configuration is read and the trainer opened before
# any network or TLS work: an accepted spec gets as far as the missing
# certificates, a refused one stops with exit 2 naming the key).
set -euo pipefail
node=${FEDLORA_NODE_BIN:?}
coord=${FEDLORA_COORD_BIN:?}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() {
	echo "FAIL: $*" >&2
	exit 1
}

cat >"$dir/coord.conf" <<EOF
[federation]
base_sha256 = 0000000000000000000000000000000000000000000000000000000000000000
[adapter]
layers = 2
dims = attn_q=64x64,attn_k=32x64,attn_v=32x64,attn_output=64x64,ffn_gate=128x64,ffn_up=128x64,ffn_down=64x128
n_head = 4
n_head_kv = 2
[lora]
targets = all
[state]
dir = $dir/cstate
EOF
cat >"$dir/node.conf" <<EOF
[node]
state_dir = $dir/nstate
trainer = synth
[coordinator]
endpoint = tcp://127.0.0.1:9
[tls]
cert = $dir/none/node.crt
key = $dir/none/node.key
ca = $dir/none/ca.crt
EOF

# 1. the coordinator accepts targets = all and means the seven
out=$("$coord" check-config --config "$dir/coord.conf") || fail "check-config refused lora.targets = all: $out"
grep -q "targets attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down: 28 tensors" <<<"$out" ||
	fail "check-config with targets = all: $out"
echo "ok: the coordinator accepts lora.targets = all (28 tensors)"

# What each binary says about one setting, without its own prefix. $1 is
# "flag" or "env", $2 the key, $3 the value. Sets rc_c/rc_n and msg_c/msg_n.
ask() {
	local how=$1 key=$2 val=$3 envname
	envname=FEDLORA_$(tr 'a-z.' 'A-Z_' <<<"$key")
	local -a cargs=(check-config --config "$dir/coord.conf") nargs=(run --config "$dir/node.conf")
	local -a envs=()
	if [ "$how" = flag ]; then
		cargs+=("--$key=$val")
		nargs+=("--$key=$val")
	else
		envs=("$envname=$val")
	fi
	set +e
	msg_c=$(env "${envs[@]}" "$coord" "${cargs[@]}" 2>&1 >/dev/null)
	rc_c=$?
	raw_n=$(env "${envs[@]}" timeout 60 "$node" "${nargs[@]}" 2>&1)
	rc_n=$?
	set -e
	rm -rf "$dir/nstate"
	msg_c=$(sed -n 's/^check-config: configuration error: //p' <<<"$msg_c")
	# the node says it on stderr (configuration layer) or in its log (spec)
	msg_n=$(sed -n -e 's/^fedlora-node run: //p' -e 's/^.* error node\[run\] //p' <<<"$raw_n" | head -n 1)
}

refuse() {
	local how=$1 key=$2 val=$3 want=$4
	ask "$how" "$key" "$val"
	[ "$rc_c" = 2 ] || fail "coordinator: $key = $val ($how) exit $rc_c, want 2 ($msg_c)"
	[ "$rc_n" = 2 ] || fail "node: $key = $val ($how) exit $rc_n, want 2 ($msg_n)"
	[ "$msg_c" = "$msg_n" ] || fail "$key = $val ($how): the binaries differ:
  coordinator: $msg_c
  node:        $msg_n"
	grep -qF -- "$want" <<<"$msg_c" || fail "$key = $val ($how): '$msg_c' lacks '$want'"
	echo "ok: both refuse $key = $val ($how): $msg_c"
}

accept() {
	local key=$1 val=$2
	ask flag "$key" "$val"
	[ "$rc_c" = 0 ] || fail "coordinator refused $key = $val: $msg_c"
	# the node got past its configuration and its trainer to the missing CA
	[ "$rc_n" = 2 ] && grep -q "node starting: trainer synth" <<<"$raw_n" &&
		grep -q "CA certificate" <<<"$raw_n" ||
		fail "node: $key = $val did not reach the TLS set-up (exit $rc_n): $raw_n"
	echo "ok: both accept $key = $val"
}

for v in 1 4096; do accept lora.rank $v; done
for v in 1e-6 1e6; do accept lora.alpha $v; done
for v in 0 9200000000000000000; do accept lora.init_seed $v; done
accept lora.targets all
accept lora.targets "attn_q, ffn_down"

refuse flag lora.rank 0 "lora.rank = 0 is out of range [1, 4096]"
refuse flag lora.rank 4097 "lora.rank = 4097 is out of range [1, 4096]"
refuse env lora.rank 4097 "environment FEDLORA_LORA_RANK: lora.rank = 4097 is out of range [1, 4096]"
refuse flag lora.alpha 0 "lora.alpha = 0 is out of range [1e-06, 1e+06]"
refuse flag lora.alpha 1000001 "lora.alpha = 1000001 is out of range [1e-06, 1e+06]"
refuse flag lora.init_seed -1 "lora.init_seed = -1 is out of range [0, 9.2e+18]"
refuse flag lora.init_seed 9210000000000000000 "lora.init_seed = 9210000000000000000 is out of range [0, 9.2e+18]"
refuse flag lora.targets attn_q,bogus "lora.targets: unknown LoRA target 'bogus'"
refuse flag lora.targets ", ," "lora.targets: no LoRA target given"

# the same from the files themselves
sed -i 's/^targets = all$/targets = all\nrank = 5000/' "$dir/coord.conf"
printf '[lora]\nrank = 5000\n' >>"$dir/node.conf"
ask flag lora.rslora false
[ "$rc_c" = 2 ] && [ "$rc_n" = 2 ] || fail "rank = 5000 in the files: exits $rc_c / $rc_n"
grep -q "coord.conf:[0-9]*: lora.rank = 5000 is out of range \[1, 4096\]" <<<"$msg_c" ||
	fail "coordinator: $msg_c"
grep -q "node.conf:[0-9]*: lora.rank = 5000 is out of range \[1, 4096\]" <<<"$msg_n" || fail "node: $msg_n"
echo "ok: rank = 5000 in either file: the same sentence with file:line"
