#!/usr/bin/env bash
# test_outputs — what the node writes for a person or another program:
#   - file modes: exports (init-model, train output, export gguf-lora / peft /
#     merged) follow the umask; the node's private state stays 0600 even
#     under umask 000 (docs/FORMATS.md, "File modes");
#   - eval --per-token: one line per scored token, whose mean is the nll
#     eval reports; --llama-compatible: the chunk windowing of
#     llama-perplexity (count, positions, and the first chunk's values equal
#     to the strided run's, which sees the same context there);
#   - train --dump-grads: the first step's gradients, whose norm is the
#     grad-norm the optimiser printed for step 1 (computed separately);
#   - export/train --base-model-id in adapter_config.json.
set -u
NODE=${FEDLORA_NODE_BIN:?FEDLORA_NODE_BIN not set}
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
# shellcheck source=tests/integration/cli_lib.sh
. "$(dirname "$0")/cli_lib.sh"
run() { # run NAME CMD...: must exit 0
	if "$@" >"$DIR/out" 2>"$DIR/err"; then ok "$*"; else
		bad "$*: exit $?"
		cat "$DIR/out" "$DIR/err"
	fi
}
mode() { stat -c %a "$1"; }
cd "$DIR" || exit 1
for i in $(seq 1 150); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >text.txt

# ---- file modes
for um in 022 000 077; do
	want=$(printf '%o' $((0666 & ~0$um)))
	wantd=$(printf '%o' $((0777 & ~0$um)))
	(
		umask $um
		"$NODE" init-model --out m$um.gguf --dim 64 --layers 2 --heads 4 --ffn 96 --ctx 64 --seed 3 &&
			"$NODE" train --model m$um.gguf --data text.txt --out t$um --rank 4 --steps 1 --ctx 32 --batch 2 &&
			"$NODE" export --model m$um.gguf --adapter t$um --format gguf-lora --out l$um.gguf &&
			"$NODE" export --model m$um.gguf --adapter t$um --format merged --out g$um.gguf &&
			"$NODE" export --model m$um.gguf --adapter t$um --format peft --out p$um
	) >out 2>err || { bad "umask $um: a command failed"; cat out err; continue; }
	got="$(mode m$um.gguf) $(mode t$um/adapter_model.safetensors) $(mode t$um/adapter_config.json) $(mode l$um.gguf) $(mode g$um.gguf) $(mode p$um/adapter_model.safetensors) $(mode p$um/adapter_config.json)"
	check "umask $um: exports are $want ($got)" "[ '$got' = '$want $want $want $want $want $want $want' ]"
	check "umask $um: export directories are $wantd" "[ \$(mode t$um) = $wantd ] && [ \$(mode p$um) = $wantd ]"
done
# private state under umask 000: a node (synth trainer, nobody listening)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >n.conf <<EOF
[node]
state_dir = $DIR/state
trainer = synth
[coordinator]
endpoint = tcp://127.0.0.1:$port
[tls]
cert = /nonexistent.crt
key = /nonexistent.key
ca = /nonexistent.crt
EOF
# without certificates the node stops before its state: make real ones
SRC=${FEDLORA_SRC:-}
if [ -n "$SRC" ] && bash "$SRC/deploy/certs.sh" init pki >/dev/null 2>&1 &&
	bash "$SRC/deploy/certs.sh" node pki --count 1 >/dev/null 2>&1; then
	sed -i -e "s|^cert = .*|cert = pki/nodes/node-01.crt|" -e "s|^key = .*|key = pki/nodes/node-01.key|" \
		-e "s|^ca = .*|ca = pki/ca.crt|" n.conf
	(umask 000 && timeout -s TERM 3 "$NODE" run --config n.conf >node.log 2>&1)
	st=$(find state -type f -printf '%m %p\n' | sort)
	echo "$st"
	check "umask 000: the node's state files exist and are all 600" \
		"[ -n \"\$st\" ] && ! grep -qv '^600 ' <<<\"\$st\""
	check "umask 000: the state directory is 700" "[ \$(mode state) = 700 ]"
else
	bad "cannot make certificates for the node (FEDLORA_SRC=$SRC)"
fi

# ---- eval --per-token and --llama-compatible
M=m022.gguf
run "$NODE" eval --model $M --data text.txt --ctx 64 --stride 32 --per-token pt.tsv
nll=$(sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p' out)
scored=$(sed -n 's/.* over \([0-9]*\) scored tokens.*/\1/p' out)
check "per-token: one line per scored token ($scored)" "[ \$(grep -vc '^#' pt.tsv) = '$scored' ]"
check "per-token: the mean of the lines is the reported nll ($nll)" \
	"awk -v want=$nll '!/^#/{s+=\$3;n++} END{d=s/n-want; exit !(d<1e-5 && d>-1e-5)}' pt.tsv"
check "per-token: positions 1..N in order, each once" \
	"awk '!/^#/{if (\$1 != ++k) exit 1} END{exit !(k>0)}' pt.tsv"
run "$NODE" eval --model $M --data text.txt --ctx 64 --llama-compatible --per-token pl.tsv
ntok=$(sed -n 's/.*bytes -> \([0-9]*\) tokens.*/\1/p' out)
lnll=$(sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p' out)
chunks=$((ntok / 64))
check "llama-compatible: $chunks chunks x 31 targets scored" "[ \$(grep -vc '^#' pl.tsv) = $((chunks * 31)) ]"
check "llama-compatible: targets at chunk offsets 33..63" \
	"awk '!/^#/{o=\$1%64; if (o<33 || o>63) exit 1}' pl.tsv"
check "llama-compatible: mean of the lines is the nll ($lnll)" \
	"awk -v want=$lnll '!/^#/{s+=\$3;n++} END{d=s/n-want; exit !(d<1e-5 && d>-1e-5)}' pl.tsv"
# chunk 0 starts at the text's BOS, as the strided run's first window does:
# same context, same values
check "llama-compatible: chunk 0 equals the strided run at positions 33..63" \
	"join <(awk '!/^#/ && \$1<64 {print \$1, \$3}' pl.tsv) <(awk '!/^#/ && \$1>=33 && \$1<64 {print \$1, \$3}' pt.tsv) |
	 awk '{d=\$2-\$3; if (d>1e-4||d<-1e-4) exit 1; n++} END{exit !(n==31)}'"
"$NODE" eval --model $M --data text.txt --llama-compatible --stride 8 >out 2>err
check "llama-compatible with --stride: usage error" "[ \$? = 2 ] && grep -q 'drop --stride' err"

# ---- train --dump-grads
run "$NODE" train --model $M --data text.txt --out dg --rank 4 --steps 2 --ctx 32 --batch 2 --dump-grads g.safetensors
gn=$(sed -n 's/^step    1\/2 .*grad-norm \([0-9.]*\).*/\1/p' out)
python3 - g.safetensors "$gn" >dg.txt <<'EOF' || true
import json, math, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
d = b[8 + n:]
ss, a_nz, b_nz, names = 0.0, 0, 0, 0
for k, v in h.items():
    if k == '__metadata__':
        continue
    names += 1
    s, e = v['data_offsets']
    xs = struct.unpack('<%df' % ((e - s) // 4), d[s:e])
    ss += sum(x * x for x in xs)
    nz = sum(1 for x in xs if x != 0)
    if k.endswith('lora_a'):
        a_nz += nz
    else:
        b_nz += nz
meta = h['__metadata__']
print(names, '%.6f' % math.sqrt(ss), meta['fedlora.grads.grad_norm'], a_nz, b_nz)
EOF
read -r names norm mnorm a_nz b_nz <dg.txt
check "dump-grads: $names canonical tensors (2 layers x 7 targets x a/b)" "[ '$names' = 28 ]"
check "dump-grads: norm $norm = the optimiser's step-1 grad-norm $gn (3 decimals)" \
	"awk -v a='$norm' -v b='$gn' 'BEGIN{d=a-b; exit !(b>0 && d<0.0006 && d>-0.0006)}'"
check "dump-grads: metadata grad_norm $mnorm agrees" \
	"awk -v a='$norm' -v b='$mnorm' 'BEGIN{d=a-b; exit !(d<1e-6 && d>-1e-6)}'"
# PEFT init: B = 0, so dL/dA = 0 and dL/dB != 0 at step 1
check "dump-grads: lora_a gradients 0 and lora_b not at a PEFT init ($a_nz, $b_nz)" \
	"[ '$a_nz' = 0 ] && [ '$b_nz' -gt 0 ]"

# ---- --base-model-id
run "$NODE" export --model $M --adapter dg --format peft --out hf --base-model-id Org/Base-1B
check "export --base-model-id in adapter_config.json" \
	"grep -q '\"base_model_name_or_path\":[[:space:]]*\"Org/Base-1B\"' hf/adapter_config.json"
run "$NODE" train --model $M --data text.txt --out hf2 --rank 4 --steps 1 --ctx 32 --batch 2 --base-model-id Org/Base-1B
check "train --base-model-id in adapter_config.json" \
	"grep -q '\"base_model_name_or_path\":[[:space:]]*\"Org/Base-1B\"' hf2/adapter_config.json"

echo "test_outputs: $pass passed, $fails failed"
[ "$fails" = 0 ]
