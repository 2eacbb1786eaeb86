#!/usr/bin/env bash
# test_llamacpp_models — forward parity with llama.cpp, per architecture and
# tensor type: tiny random models made by `fedlora-node init-model` (the
# llama-spm vocabulary of 32000 tokens) must load in llama.cpp and give
#   1. the same mean NLL per token on a 25-token text (one window, every
#      token after BOS scored): fedlora `eval` vs llama.cpp's full
#      next-token probabilities; |difference| <= 1e-4 of the NLL + 0.001
#      nats for F32, 0.5% + 0.01 for F16/BF16 (llama.cpp rounds the
#      activations to 16 bits for those dot products), 2% + 0.02 for the
#      quantized types (llama.cpp quantizes the activations to 8 bits for
#      Q8_0/Q4_x/Q5_x/K-quant dot products; we multiply f32 activations with
#      the dequantized weights); the measured values are printed;
#   2. for the F32/F16/BF16 models (init std 0.5, a peaked next-token
#      distribution) the same 16-token greedy continuation as
#      `generate --temp 0`, exactly (compared as text without spaces and
#      without the bytes that are not valid UTF-8, which the two sides
#      render differently). Quantized models get std 0.2 and no greedy
#      check: with 8-bit activations on llama.cpp's side, near-ties flip.
# Cases: llama (F32, F16, BF16, Q8_0, Q4_0, Q6_K, Llama 3 RoPE factors in F32
# and in a Q4_K_M-style mix, Q5_K_M mix), qwen2 (F32 tied, Q5_0, Q5_1,
# Q4_1), qwen3 (F32 and Q4_K_M mix; heads of 24 on dim 64 and of 96 on dim
# 256, per-head q/k norms).
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
JS="$NLDIR/fl_models_$$.mjs"
trap 'rm -rf "$DIR" "$JS"' EXIT
# One node process for every model: argv = prompt, n, text file, models...
# Writes per model: "CONT <continuation as JSON>" and "NLL <mean> <count>".
cat >"$JS" <<'JS'
import {getLlama} from "node-llama-cpp";
import {readFileSync} from "node:fs";
const [prompt, n, textFile, ...models] = process.argv.slice(2);
const text = readFileSync(textFile, "utf8");
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const all = {temperature: 1, topK: 0, topP: 1, minP: 0};
for (const modelPath of models) {
	const model = await llama.loadModel({modelPath});
	const ctx = await model.createContext({contextSize: 64, batchSize: 64, threads: 2,
		flashAttention: false, experimentalKvCacheKeyType: "F32",
		experimentalKvCacheValueType: "F32"});
	const bos = (t) => model.tokens.shouldPrependBosToken ? [model.tokens.bos, ...t] : t;
	// 1. greedy continuation
	const seq = ctx.getSequence();
	let toks = bos(model.tokenize(prompt));
	const out = [];
	for (let i = 0; i < Number(n); i++) {
		const r = await seq.controlledEvaluate(toks.map((t, j) =>
			j === toks.length - 1 ? [t, {generateNext: {token: true, options: {temperature: 0}}}] : t));
		const next = r[toks.length - 1].next.token;
		out.push(next);
		toks = [next];
	}
	await seq.clearHistory();
	// 2. mean NLL of the text, from every position's full next-token distribution
	const tt = bos(model.tokenize(text));
	const r = await seq.controlledEvaluate(tt.map((t, j) => j < tt.length - 1 ?
		[t, {generateNext: {probabilities: true, options: all}}] : t));
	let nll = 0;
	for (let j = 0; j < tt.length - 1; j++)
		nll -= Math.log(r[j].next.probabilities.get(tt[j + 1]) ?? 0);
	console.log("CONT " + JSON.stringify(prompt + model.detokenize(out)));
	console.log("NLL " + (nll / (tt.length - 1)) + " " + (tt.length - 1));
	await ctx.dispose();
	await model.dispose();
}
JS
# text for comparison: no spaces, no U+FFFD / invalid UTF-8 (stdin: raw
# bytes, or with --json a JSON string)
norm() {
	node -e 'let b=[];process.stdin.on("data",d=>b.push(d)).on("end",()=>{let s=Buffer.concat(b).toString("utf8");if(process.argv[1]==="--json")s=JSON.parse(s);process.stdout.write(s.replace(/[\s\uFFFD]/g,""))})' -- "$@"
}
printf 'The quick brown fox jumps over the lazy dog; 12 small birds sang 345 songs.\n' >"$DIR/text.txt"
# name | init-model arguments
CASES=(
	"llama-f32|--arch llama --dim 64 --ffn 96 --type f32"
	"llama3-f32|--arch llama --dim 64 --ffn 96 --type f32 --rope-llama3 8,1,4,16 --rope-base 500000"
	"qwen2-f32-tied|--arch qwen2 --dim 64 --ffn 96 --type f32 --tie-embeddings"
	"qwen3-f32|--arch qwen3 --dim 64 --ffn 96 --head-dim 24 --type f32"
	"llama-f16|--arch llama --dim 64 --ffn 96 --type f16"
	"llama-bf16|--arch llama --dim 64 --ffn 96 --type bf16"
	"llama-q8_0|--arch llama --dim 64 --ffn 96 --type q8_0"
	"llama-q4_0|--arch llama --dim 64 --ffn 96 --type q4_0"
	"llama-q6_k|--arch llama --dim 256 --ffn 256 --type q6_k"
	"llama3-q4_k_m|--arch llama --dim 256 --ffn 512 --type q4_k_m --rope-llama3 8,1,4,16 --rope-base 500000"
	"llama-q5_k_m|--arch llama --dim 256 --ffn 256 --type q5_k_m"
	"qwen2-q5_0|--arch qwen2 --dim 64 --ffn 96 --type q5_0"
	"qwen2-q5_1|--arch qwen2 --dim 64 --ffn 96 --type q5_1"
	"qwen2-q4_1|--arch qwen2 --dim 64 --ffn 96 --type q4_1 --tie-embeddings"
	"qwen3-q4_k_m|--arch qwen3 --dim 256 --ffn 256 --head-dim 96 --type q4_k_m"
)
models=()
for c in "${CASES[@]}"; do
	name=${c%%|*}
	case $name in *f32* | *f16*) std=0.5 ;; *) std=0.2 ;; esac
	# shellcheck disable=SC2086
	"$BIN" init-model --out "$DIR/$name.gguf" --layers 2 --heads 4 --kv-heads 2 --ctx 64 \
		--vocab-from "$VOCAB" --std $std --seed 3 ${c#*|} >/dev/null || {
		echo "FAIL - init-model $name"
		exit 1
	}
	models+=("$DIR/$name.gguf")
done
(cd "$NLDIR" && node "$JS" "Once upon a time" 16 "$DIR/text.txt" "${models[@]}") >"$DIR/theirs.txt" || {
	echo "FAIL - llama.cpp (node-llama-cpp) did not run"
	exit 1
}
fails=0
i=0
for c in "${CASES[@]}"; do
	name=${c%%|*}
	i=$((i + 1))
	tnll=$(grep '^NLL ' "$DIR/theirs.txt" | sed -n "${i}p" | cut -d' ' -f2)
	tcnt=$(grep '^NLL ' "$DIR/theirs.txt" | sed -n "${i}p" | cut -d' ' -f3)
	"$BIN" eval --model "$DIR/$name.gguf" --data "$DIR/text.txt" --ctx 64 >"$DIR/eval.txt" 2>&1
	onll=$(sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p' "$DIR/eval.txt")
	ocnt=$(sed -n 's/.* over \([0-9]*\) scored tokens.*/\1/p' "$DIR/eval.txt")
	case $name in
	*f32*) rel=0.0001 abs=0.001 greedy=1 ;;
	*f16*) rel=0.005 abs=0.01 greedy=1 ;;
	*) rel=0.02 abs=0.02 greedy=0 ;;
	esac
	if [ "$greedy" = 1 ]; then
		"$BIN" generate --model "$DIR/$name.gguf" --prompt "Once upon a time" -n 16 --temp 0 \
			>"$DIR/ours.txt" 2>/dev/null
		grep '^CONT ' "$DIR/theirs.txt" | sed -n "${i}p" | cut -c6- >"$DIR/theirs1.txt"
		ours=$(norm <"$DIR/ours.txt")
		theirs=$(norm --json <"$DIR/theirs1.txt")
		echo "$name fedlora  : $ours"
		echo "$name llama.cpp: $theirs"
		if [ -n "$ours" ] && [ "$ours" = "$theirs" ]; then echo "ok   - $name greedy continuation matches llama.cpp"; else
			echo "FAIL - $name greedy continuation differs"
			fails=$((fails + 1))
		fi
	fi
	if [ -n "$onll" ] && [ -n "$tnll" ] && [ "$ocnt" = "$tcnt" ] &&
		awk -v a="$onll" -v b="$tnll" -v r="$rel" -v e="$abs" \
			'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= r * b + e) }'; then
		echo "ok   - $name NLL/token fedlora $onll vs llama.cpp $tnll over $ocnt tokens (tol $rel rel + $abs)"
	else
		echo "FAIL - $name NLL/token fedlora '$onll' ($ocnt tokens) vs llama.cpp '$tnll' ($tcnt tokens), tol $rel rel + $abs"
		fails=$((fails + 1))
	fi
done
echo "${#CASES[@]} models, $fails failures"
[ "$fails" = 0 ]
