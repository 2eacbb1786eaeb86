#!/usr/bin/env bash
# test_model_cli — init-model -> eval -> generate through the real
# fedlora-node binary on tiny shapes: determinism by seed (and independence
# from the thread count), the random model's perplexity near the vocabulary
# size, KV-cache generation reproducible by seed, quantized and qwen2
# variants, --vocab-from a real vocabulary, and exit codes (0 ok, 1 runtime
# failure, 2 usage) with messages naming the problem.
set -u
BIN=${FEDLORA_NODE_BIN:?FEDLORA_NODE_BIN not set}
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
fails=0
pass=0
ok() { pass=$((pass + 1)); echo "ok   - $1"; }
bad() { fails=$((fails + 1)); echo "FAIL - $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
# expect_rc NAME RC CMD... : runs CMD, checks its exit code
expect_rc() {
	local name=$1 want=$2
	shift 2
	"$@" >"$DIR/out" 2>"$DIR/err"
	local rc=$?
	if [ "$rc" = "$want" ]; then ok "$name (exit $rc)"; else
		bad "$name: exit $rc, wanted $want"
		cat "$DIR/out" "$DIR/err"
	fi
}

SHAPE="--dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --ctx 96"
expect_rc "init-model f32" 0 "$BIN" init-model --out "$DIR/m.gguf" $SHAPE --seed 7
expect_rc "init-model same seed, 1 thread" 0 "$BIN" init-model --out "$DIR/m2.gguf" $SHAPE --seed 7 --threads 1
check "same seed gives the same file whatever the threads" "cmp -s '$DIR/m.gguf' '$DIR/m2.gguf'"
expect_rc "init-model other seed" 0 "$BIN" init-model --out "$DIR/m3.gguf" $SHAPE --seed 8
check "another seed gives another file" "! cmp -s '$DIR/m.gguf' '$DIR/m3.gguf'"

# a text with some structure; 3000 bytes
for i in $(seq 1 60); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >"$DIR/text.txt"
expect_rc "eval" 0 "$BIN" eval --model "$DIR/m.gguf" --data "$DIR/text.txt" --ctx 64 --stride 32 --threads 2
cp "$DIR/out" "$DIR/eval.txt"
cat "$DIR/eval.txt"
check "eval states ctx and stride" "grep -q 'ctx 64, stride 32' '$DIR/eval.txt'"
nll=$(sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p' "$DIR/eval.txt")
scored=$(sed -n 's/.* over \([0-9]*\) scored tokens.*/\1/p' "$DIR/eval.txt")
ntok=$(sed -n 's/.*bytes -> \([0-9]*\) tokens.*/\1/p' "$DIR/eval.txt")
# an untrained model (std 0.02) is near uniform over the 260 tokens: ln 260 = 5.56
check "random model nll/token $nll within 0.15 of ln(260)" \
	"awk -v x='$nll' 'BEGIN { exit !(x > 5.41 && x < 5.71) }'"
check "every token after the first scored exactly once ($scored of $ntok)" "[ '$scored' = \$(($ntok - 1)) ]"
expect_rc "eval batch 3" 0 "$BIN" eval --model "$DIR/m.gguf" --data "$DIR/text.txt" --ctx 64 --stride 32 --batch 3
nll3=$(sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p' "$DIR/out")
check "batched windows give the same nll ($nll3 vs $nll)" "[ '$nll3' = '$nll' ]"

expect_rc "generate seed 5" 0 "$BIN" generate --model "$DIR/m.gguf" --prompt "line 1:" -n 24 --seed 5 --temp 1.0
cp "$DIR/out" "$DIR/g1"
grep generate "$DIR/err"
expect_rc "generate seed 5 again" 0 "$BIN" generate --model "$DIR/m.gguf" --prompt "line 1:" -n 24 --seed 5 --temp 1.0
check "same seed, same text" "cmp -s '$DIR/g1' '$DIR/out'"
check "prompt echoed" "head -c 7 '$DIR/g1' | grep -q 'line 1:'"
check "24 tokens generated" "grep -q 'generated 24 tokens' '$DIR/err'"
expect_rc "generate greedy up to the context" 0 "$BIN" generate --model "$DIR/m.gguf" --prompt "x" -n 500 --temp 0
check "stops when the context is full" "grep -q 'context full' '$DIR/err'"
expect_rc "generate --help" 0 "$BIN" generate --help
check "generate --help names --adapter and --alpha" "grep -q -- '--adapter PATH' '$DIR/out' && grep -q -- '--alpha A' '$DIR/out'"

expect_rc "init-model qwen2 q8_0" 0 "$BIN" init-model --out "$DIR/q.gguf" $SHAPE --arch qwen2 --type q8_0 --tie-embeddings
expect_rc "eval qwen2 q8_0" 0 "$BIN" eval --model "$DIR/q.gguf" --data "$DIR/text.txt" --ctx 32
check "eval reports Q8_0 matrices" "grep -q 'qwen2.*Q8_0' '$DIR/out'"
expect_rc "generate qwen2 q8_0" 0 "$BIN" generate --model "$DIR/q.gguf" --prompt "hello" -n 8 --seed 1
expect_rc "init-model q4_0" 0 "$BIN" init-model --out "$DIR/q4.gguf" $SHAPE --type q4_0
expect_rc "eval q4_0" 0 "$BIN" eval --model "$DIR/q4.gguf" --data "$DIR/text.txt" --ctx 32 --max-tokens 200
check "--max-tokens limits the tokens" "grep -q 'first 200 used' '$DIR/out'"

# every tensor type of the usual downloads, and the new architectures: the
# files load and a random model stays near uniform (NLL within 0.15 of
# ln 260); K-quants need rows of 256 (dim 256), else init-model falls back
# to Q5_0/Q5_1/Q8_0 as llama.cpp does
SHAPEK="--dim 256 --layers 1 --heads 4 --kv-heads 2 --ffn 256 --ctx 64"
for spec in "llama bf16" "llama q4_1" "llama q5_0" "qwen2 q5_1" "llama q4_k" "llama q5_k" \
	"llama q6_k" "qwen3 q4_k_m" "llama q5_k_m" "qwen3 q8_0"; do
	set -- $spec
	extra=""
	[ "$1" = qwen3 ] && extra="--head-dim 96"
	[ "$1" = llama ] && extra="--rope-llama3 8,1,4,32 --rope-base 500000"
	expect_rc "init-model $1 $2" 0 "$BIN" init-model --out "$DIR/t.gguf" $SHAPEK --arch "$1" --type "$2" $extra
	expect_rc "eval $1 $2" 0 "$BIN" eval --model "$DIR/t.gguf" --data "$DIR/text.txt" --ctx 64 --max-tokens 600
	nllt=$(sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p' "$DIR/out")
	check "$1 $2: nll/token $nllt within 0.15 of ln(260)" \
		"awk -v x='$nllt' 'BEGIN { exit !(x > 5.41 && x < 5.71) }'"
	check "$1 $2: eval names the architecture" "grep -q 'model .*: $1,' '$DIR/out'"
	expect_rc "generate $1 $2" 0 "$BIN" generate --model "$DIR/t.gguf" --prompt "line" -n 6 --seed 1
done
# the fallback for rows that are not a multiple of 256 (dim 64): q4_k -> q5_0
expect_rc "init-model q4_k at dim 64" 0 "$BIN" init-model --out "$DIR/t.gguf" $SHAPE --type q4_k
expect_rc "eval q4_k at dim 64" 0 "$BIN" eval --model "$DIR/t.gguf" --data "$DIR/text.txt" --ctx 32 --max-tokens 200

VOCAB=${FEDLORA_SHARED:-/nonexistent}/data/vocab/ggml-vocab-llama-spm.gguf
if [ -r "$VOCAB" ]; then
	expect_rc "init-model --vocab-from llama-spm" 0 "$BIN" init-model --out "$DIR/v.gguf" --dim 32 --layers 1 --heads 2 --ffn 64 --ctx 64 --vocab-from "$VOCAB" --type f16
	check "vocabulary of 32000 tokens" "grep -q 'vocab 32000' '$DIR/out'"
	expect_rc "eval with the SentencePiece vocabulary" 0 "$BIN" eval --model "$DIR/v.gguf" --data "$DIR/text.txt" --ctx 64
	expect_rc "generate with the SentencePiece vocabulary" 0 "$BIN" generate --model "$DIR/v.gguf" --prompt "Hello" -n 5 --seed 2
else
	echo "skip - --vocab-from: $VOCAB not found (set FEDLORA_SHARED)"
fi

# usage errors: exit 2 with a message naming the option
expect_rc "init-model --help" 0 "$BIN" init-model --help
check "help lists --vocab-from" "grep -q -- '--vocab-from' '$DIR/out'"
expect_rc "eval --help" 0 "$BIN" eval --help
expect_rc "generate --help" 0 "$BIN" generate --help
expect_rc "init-model missing --out" 2 "$BIN" init-model --dim 64 --layers 1 --heads 4 --ffn 64 --ctx 8
expect_rc "init-model dim not multiple of heads" 2 "$BIN" init-model --out "$DIR/x.gguf" --dim 66 --layers 1 --heads 4 --ffn 64 --ctx 8
check "message names --heads" "grep -q -- '--heads' '$DIR/err'"
expect_rc "init-model q4_0 with ffn 50" 2 "$BIN" init-model --out "$DIR/x.gguf" --dim 64 --layers 1 --heads 4 --ffn 50 --ctx 8 --type q4_0
expect_rc "init-model bad type" 2 "$BIN" init-model --out "$DIR/x.gguf" $SHAPE --type q3_k
expect_rc "init-model bad --rope-llama3" 2 "$BIN" init-model --out "$DIR/x.gguf" $SHAPE --rope-llama3 32,4,1,8192
check "message names --rope-llama3" "grep -q -- '--rope-llama3' '$DIR/err'"
expect_rc "init-model odd --head-dim" 2 "$BIN" init-model --out "$DIR/x.gguf" $SHAPE --head-dim 15
expect_rc "init-model non-numeric" 2 "$BIN" init-model --out "$DIR/x.gguf" $SHAPE --layers two
check "message names --layers" "grep -q -- '--layers' '$DIR/err'"
expect_rc "eval without --data" 2 "$BIN" eval --model "$DIR/m.gguf"
expect_rc "eval ctx beyond the model" 2 "$BIN" eval --model "$DIR/m.gguf" --data "$DIR/text.txt" --ctx 4096
expect_rc "eval stride > ctx" 2 "$BIN" eval --model "$DIR/m.gguf" --data "$DIR/text.txt" --ctx 16 --stride 17
expect_rc "generate unknown option" 2 "$BIN" generate --model "$DIR/m.gguf" --prompt x --bogus
# runtime failures: exit 1
expect_rc "eval missing model file" 1 "$BIN" eval --model "$DIR/none.gguf" --data "$DIR/text.txt"
head -c 1000 "$DIR/m.gguf" >"$DIR/trunc.gguf"
expect_rc "eval truncated model" 1 "$BIN" eval --model "$DIR/trunc.gguf" --data "$DIR/text.txt"
check "message names the file" "grep -q 'trunc.gguf' '$DIR/err'"
expect_rc "eval missing data file" 1 "$BIN" eval --model "$DIR/m.gguf" --data "$DIR/none.txt"
expect_rc "init-model vocab from a non-GGUF" 1 "$BIN" init-model --out "$DIR/x.gguf" $SHAPE --vocab-from "$DIR/text.txt"
expect_rc "generate prompt longer than the context" 1 "$BIN" generate --model "$DIR/m.gguf" --prompt "$(head -c 200 "$DIR/text.txt")" -n 1

echo "$pass passed, $fails failed"
[ "$fails" = 0 ]
