#!/usr/bin/env bash
# test_cli_errors — the messages a person meets when an input is wrong,
# through the real binaries: each case checks the exit code and that the
# message names the problem (and says it once). Directories given as
# --config / --model / --data, a node config without data.train, a file that
# is not a GGUF, a busy metrics port, a binary config file, binary and empty
# eval data, a node whose coordinator does not answer, a certificate from
# another CA, `train --init` taking rank and targets from the adapter, the
# Prometheus counters reporting from the start, and deploy/coordinator.conf
# showing defaults except where it says a path is an example.
set -u
NODE=${FEDLORA_NODE_BIN:?FEDLORA_NODE_BIN not set}
COORD=${FEDLORA_COORD_BIN:?FEDLORA_COORD_BIN not set}
SRC=${FEDLORA_SRC:?FEDLORA_SRC not set}
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$DIR"
}
trap cleanup EXIT
# shellcheck source=tests/integration/cli_lib.sh
. "$(dirname "$0")/cli_lib.sh"
# says TEXT: stderr+stdout of the last command holds TEXT exactly once
says() { [ "$(cat "$DIR/out" "$DIR/err" | grep -cF -- "$1")" = 1 ]; }
cd "$DIR" || exit 1

"$NODE" init-model --out m.gguf --dim 64 --layers 2 --heads 4 --ffn 96 --ctx 64 --seed 3 >/dev/null ||
	{ echo "init-model failed"; exit 1; }
for i in $(seq 1 200); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >text.txt
mkdir adir

# ---- a directory where a file is expected
expect_rc "node run --config DIR" 2 "$NODE" run --config adir
check "  says 'is a directory'" "says 'adir is a directory'"
expect_rc "coordinator serve --config DIR" 2 "$COORD" serve --config adir
check "  says 'is a directory'" "says 'adir is a directory'"
expect_rc "eval --model DIR" 1 "$NODE" eval --model adir --data text.txt
check "  says 'adir: is a directory', the path once" "says 'adir: is a directory' && ! grep -q 'adir.*adir' err"
expect_rc "eval --data DIR" 1 "$NODE" eval --model m.gguf --data adir
check "  says 'is a directory'" "says 'adir: is a directory'"
expect_rc "train --data DIR" 1 "$NODE" train --model m.gguf --data adir --out o1 --steps 1
check "  says 'is a directory'" "says 'adir: is a directory'"

# ---- not a model: the reason once, with the file's name
echo "hello" >notamodel.txt
expect_rc "fingerprint --model notamodel.txt" 1 "$NODE" fingerprint --model notamodel.txt
check "  one line naming the file and the reason" \
	"[ \$(wc -l <err) = 1 ] && grep -q 'notamodel.txt: not a GGUF file' err"

# ---- eval data: binary refused as run/train refuse it; empty named so
head -c 4096 /dev/urandom >garbage.bin
printf '\x00\x01\x02\xff\xfe' >>garbage.bin
expect_rc "eval --data binary garbage" 1 "$NODE" eval --model m.gguf --data garbage.bin
check "  says 'not valid UTF-8'" "says 'not valid UTF-8'"
printf '  \n\n' >empty.txt
expect_rc "eval --data empty file" 1 "$NODE" eval --model m.gguf --data empty.txt
check "  says the file is empty (and nothing about training)" \
	"says 'empty.txt: the file is empty' && ! grep -q 'train' err"

# ---- configs
bash "$SRC/deploy/certs.sh" init pki >/dev/null &&
	bash "$SRC/deploy/certs.sh" coordinator pki --ip 127.0.0.1 >/dev/null &&
	bash "$SRC/deploy/certs.sh" node pki --count 1 >/dev/null &&
	bash "$SRC/deploy/certs.sh" init other >/dev/null &&
	bash "$SRC/deploy/certs.sh" node other --count 1 >/dev/null || { echo "certs.sh failed"; exit 1; }
fp=$("$NODE" fingerprint --model m.gguf)
coord_conf() { # coord_conf FILE METRICS_LISTEN
	cat >"$1" <<EOF
[server]
listen = tcp://127.0.0.1:*
endpoint_file = $DIR/endpoint
cert = pki/coordinator.crt
key = pki/coordinator.key
ca = pki/ca.crt
handshake_timeout_ms = 3000
[federation]
base_sha256 = $fp
[adapter]
layers = 2
dims = attn_q=64x64,attn_v=64x64
n_head = 4
n_head_kv = 4
[lora]
rank = 4
alpha = 8
targets = attn_q,attn_v
[rounds]
min_nodes = 5
[state]
dir = $DIR/cstate
[metrics]
listen = $2
EOF
}
node_conf() { # node_conf FILE ENDPOINT PKI_OF_CERT PKI_OF_CA
	cat >"$1" <<EOF
[node]
state_dir = $DIR/nstate-$(basename "$1" .conf)
trainer = synth
[coordinator]
endpoint = $2
[tls]
cert = $3/nodes/node-01.crt
key = $3/nodes/node-01.key
ca = $4/ca.crt
EOF
}

# a binary config: refused by name, none of its bytes echoed
head -c 2000 /dev/urandom | tr -d '\n' >bin.conf
expect_rc "node run --config binary" 2 "$NODE" run --config bin.conf
check "  says 'not a text file'" "says 'bin.conf:1: not a text file'"
check "  echoes no byte of the file (printable ASCII only)" \
	"! LC_ALL=C grep -q '[^[:print:][:space:]]' out err"
expect_rc "coordinator check-config binary" 2 "$COORD" check-config --config bin.conf
check "  says 'not a text file'" "says 'not a text file'"

# data.train missing: the key named
node_conf nt.conf tcp://127.0.0.1:9 pki pki
sed -i 's/^trainer = synth/trainer = lora/' nt.conf
printf '[model]\npath = m.gguf\n' >>nt.conf
expect_rc "node run without data.train" 2 "$NODE" run --config nt.conf
check "  names data.train" "says 'data.train is not set'"

# busy metrics port: the real reason, no libmicrohttpd 'port 0' line
python3 -c 'import socket,sys,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1)
print(s.getsockname()[1], flush=True); time.sleep(60)' >busy.port &
pids+=("$!")
for _ in $(seq 50); do [ -s busy.port ] && break; sleep 0.1; done
coord_conf busy.conf "127.0.0.1:$(cat busy.port)"
expect_rc "coordinator with a busy metrics port" 1 timeout 20 "$COORD" serve --config busy.conf
check "  says 'Address already in use'" "says 'Address already in use'"
check "  no 'Failed to bind to port 0' line" "! grep -q 'Failed to bind' out err"

# ---- a node with nobody listening: a warning with the next attempt's time
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
node_conf nobody.conf "tcp://127.0.0.1:$port" pki pki
timeout -s TERM 16 "$NODE" run --config nobody.conf >"$DIR/out" 2>"$DIR/err"
check "node without a coordinator warns with the next attempt's time" \
	"grep -E 'warn .*no answer from the coordinator at tcp://127.0.0.1:$port for [0-9]+ s.*next attempt in [0-9.]+ s' err"

# ---- a coordinator (metrics on a free port) and a node of another CA
coord_conf c.conf 127.0.0.1:0
rm -f endpoint # the coordinator above wrote one before it failed
"$COORD" serve --config c.conf >coord.log 2>&1 &
cpid=$!
pids+=("$cpid")
for _ in $(seq 100); do [ -s endpoint ] && grep -q 'metrics on http' coord.log && break; sleep 0.1; done
ep=$(cat endpoint)
mport=$(sed -n 's/.*metrics on http:\/\/127.0.0.1:\([0-9]*\)\/metrics.*/\1/p' coord.log)
node_conf wrongca.conf "$ep" pki other
timeout -s TERM 6 "$NODE" run --config wrongca.conf >"$DIR/out" 2>"$DIR/err"
n_att=$(grep -cE 'session [0-9]+: handshake with .* failed: coordinator certificate refused' err)
n_all=$(grep -c 'certificate refused' err)
check "certificate failure logged once per attempt ($n_att attempts, $n_all lines)" \
	"[ '$n_att' -ge 2 ] && [ '$n_all' = '$n_att' ]"
if [ -n "$mport" ]; then
	curl -s "http://127.0.0.1:$mport/metrics" >metrics.txt
	for want in 'fedlora_updates_rejected_total{reason="late"} 0' \
		'fedlora_updates_rejected_total{reason="norm"} 0' \
		'fedlora_updates_clipped_total 0' \
		'fedlora_joins_rejected_total{reason="base"} 0' \
		'# TYPE fedlora_tls_handshakes_total counter' \
		'# TYPE fedlora_wire_bytes_total counter'; do
		check "metrics: $want" "grep -qF '$want' metrics.txt"
	done
	check "metrics: the failed handshakes counted" \
		"grep -E '^fedlora_tls_handshakes_total\\{result=\"(failed|ok)\"\\} [1-9]' metrics.txt"
else
	bad "the coordinator did not say its metrics port"
	cat coord.log
fi
kill "$cpid" 2>/dev/null
wait "$cpid" 2>/dev/null

# ---- train --init: rank and targets from the adapter unless given
expect_rc "train a rank-4 adapter on attn_q,attn_v" 0 "$NODE" train --model m.gguf --data text.txt \
	--out a4 --rank 4 --targets attn_q,attn_v --steps 2 --ctx 32 --batch 2
expect_rc "train --init it without --rank/--targets" 0 "$NODE" train --model m.gguf --data text.txt \
	--out a5 --init a4 --steps 2 --ctx 32 --batch 2
check "  trains rank 4 on attn_q,attn_v" "grep -q 'LoRA rank 4 alpha 8 on attn_q,attn_v' out"
check "  writes r = 4" "grep -q '\"r\":[[:space:]]*4' a5/adapter_config.json"
expect_rc "train --init with a --rank that differs" 1 "$NODE" train --model m.gguf --data text.txt \
	--out a6 --init a4 --rank 8 --steps 2 --ctx 32 --batch 2
check "  says the given rank and the file's" "says '--rank 8 given but the adapter' && says 'rank 4'"

# ---- deploy/coordinator.conf: every value is the default unless marked
"$COORD" serve --help 2>&1 | awk '/^  \[/{s=substr($1,2,length($1)-2)}
	/^    [a-z_]+ /{ if (match($0,/\(default: [^;]*;/)) print s"."$1"="substr($0,RSTART+10,RLENGTH-11) }' >defaults.txt
awk '/^\[/{s=substr($0,2,length($0)-2)} /^[a-z_]+ *=/{split($0,a,/ *= */); print s"."a[1]"="a[2]}' \
	"$SRC/deploy/coordinator.conf" >shown.txt
odd=""
while IFS= read -r l; do
	k=${l%%=*}
	d=$(grep -m1 "^$k=" defaults.txt)
	[ "${l#*=}" = "${d#*=}" ] || odd="$odd ${k#*.}"
done <shown.txt
check "coordinator.conf differs from the defaults only where marked (${odd# })" \
	"[ '${odd# }' = 'cert key ca base_gguf targets' ] && grep -q 'show example paths' '$SRC/deploy/coordinator.conf'"

echo "test_cli_errors: $pass passed, $fails failed"
[ "$fails" = 0 ]
