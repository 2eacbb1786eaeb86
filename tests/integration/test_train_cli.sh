#!/usr/bin/env bash
# test_train_cli — `fedlora-node train` through the real binary on a tiny
# model: full training writes a GGUF that eval/generate load and that
# scores the text better than the random base; LoRA on instruction JSONL
# writes a PEFT adapter that eval/generate take with --adapter (and that
# makes the model answer as its data does); QLoRA (--base-quant q8_0); LoRA
# on qwen3 and Llama-3-scaled models with K-quant bases; the same seed
# gives the same adapter bytes; plain log lines when not on a terminal;
# exit codes 0 / 1 (bad data, naming file and line) / 2 (usage).
set -u
BIN=${FEDLORA_NODE_BIN:?FEDLORA_NODE_BIN not set}
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
fails=0
pass=0
ok() { pass=$((pass + 1)); echo "ok   - $1"; }
bad() { fails=$((fails + 1)); echo "FAIL - $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
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
nll_of() { sed -n 's/.*nll\/token \([0-9.]*\).*/\1/p' "$1"; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

expect_rc "init-model" 0 "$BIN" init-model --out "$DIR/base.gguf" --dim 64 --layers 2 --heads 4 \
	--kv-heads 2 --ffn 128 --ctx 64 --seed 3
for i in $(seq 1 80); do echo "machine $((i % 4)) temperature $((40 + i % 9)) status ok"; done >"$DIR/logs.txt"

# full training
expect_rc "train --full" 0 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/logs.txt" \
	--out "$DIR/full" --full --steps 40 --lr 3e-3 --batch 4 --ctx 64 --threads 2 --holdout 0.1 --eval-every 20
cat "$DIR/out"
check "model.gguf written" "[ -s '$DIR/full/model.gguf' ]"
check "plain log lines off a terminal" "grep -q '^step    40/40' '$DIR/out'"
check "no progress bar off a terminal" "! grep -q 'ETA' '$DIR/err'"
check "held-out eval during training" "grep -q '^eval    step 20' '$DIR/out'"
check "peak RSS reported" "grep -q 'peak RSS' '$DIR/out'"
expect_rc "eval base" 0 "$BIN" eval --model "$DIR/base.gguf" --data "$DIR/logs.txt" --ctx 64
b0=$(nll_of "$DIR/out")
expect_rc "eval trained" 0 "$BIN" eval --model "$DIR/full/model.gguf" --data "$DIR/logs.txt" --ctx 64
b1=$(nll_of "$DIR/out")
echo "base nll $b0, full-trained nll $b1"
check "full training lowered the NLL by > 1 nat" "lt $b1 $(awk -v a="$b0" 'BEGIN{print a-1}')"
expect_rc "generate from the trained model" 0 "$BIN" generate --model "$DIR/full/model.gguf" \
	--prompt "machine" -n 20 --temp 0

# LoRA on instruction data
: >"$DIR/inst.jsonl"
for i in $(seq 1 30); do
	printf '{"instruction": "status of machine %d?", "input": "", "output": "all clear"}\n' \
		$((i % 5)) >>"$DIR/inst.jsonl"
done
expect_rc "train LoRA" 0 "$BIN" train --model "$DIR/full/model.gguf" --data "$DIR/inst.jsonl" \
	--out "$DIR/lora" --steps 100 --lr 2e-2 --batch 4 --ctx 64 --rank 4 --alpha 8 \
	--targets attn_q,attn_v,ffn_down --seed 5 --threads 2
check "PEFT safetensors written" "[ -s '$DIR/lora/adapter_model.safetensors' ]"
check "adapter_config.json has r 4" "grep -q '\"r\":[[:space:]]*4' '$DIR/lora/adapter_config.json'"
check "adapter_config.json lists the targets" \
	"grep -q 'q_proj' '$DIR/lora/adapter_config.json' && grep -q 'down_proj' '$DIR/lora/adapter_config.json' && ! grep -q 'up_proj' '$DIR/lora/adapter_config.json'"
expect_rc "train LoRA again, same seed" 0 "$BIN" train --model "$DIR/full/model.gguf" \
	--data "$DIR/inst.jsonl" --out "$DIR/lora2" --steps 100 --lr 2e-2 --batch 4 --ctx 64 --rank 4 \
	--alpha 8 --targets attn_q,attn_v,ffn_down --seed 5 --threads 2
check "same seed, same adapter bytes" \
	"cmp -s '$DIR/lora/adapter_model.safetensors' '$DIR/lora2/adapter_model.safetensors'"
# the instruction data rendered as the template, for eval
for i in $(seq 1 30); do
	printf '### Instruction:\nstatus of machine %d?\n\n### Response:\nall clear\n' $((i % 5))
done >"$DIR/inst.txt"
expect_rc "eval without adapter" 0 "$BIN" eval --model "$DIR/full/model.gguf" --data "$DIR/inst.txt" --ctx 64
n0=$(nll_of "$DIR/out")
expect_rc "eval --adapter" 0 "$BIN" eval --model "$DIR/full/model.gguf" --data "$DIR/inst.txt" \
	--ctx 64 --adapter "$DIR/lora"
n1=$(nll_of "$DIR/out")
echo "instruction text nll: base $n0, with adapter $n1"
# (eval scores the prompts too, which the adapter never trained on, so only
# a change is checked here; the generation below checks the direction)
check "the adapter changes the NLL" "[ '$n1' != '$n0' ]"
check "eval names the adapter" "grep -q 'rank 4, alpha 8' '$DIR/err'"
expect_rc "generate --adapter" 0 "$BIN" generate --model "$DIR/full/model.gguf" --adapter "$DIR/lora" \
	--prompt $'### Instruction:\nstatus of machine 3?\n\n### Response:\n' -n 16 --temp 0
cat "$DIR/out"
check "the adapted model answers from its data" "grep -q 'all clear' '$DIR/out'"

# QLoRA on a Q8_0 base quantized at load
expect_rc "train --base-quant q8_0" 0 "$BIN" train --model "$DIR/full/model.gguf" \
	--data "$DIR/inst.jsonl" --out "$DIR/qlora" --steps 5 --batch 2 --ctx 64 --base-quant q8_0 --threads 2
check "QLoRA says Q8_0" "grep -q 'matrices Q8_0' '$DIR/out'"

# LoRA training smoke test on the newer architectures with K-quant bases:
# qwen3 (per-head q/k norm, heads of 96 on dim 256) as a Q4_K_M-style mix,
# llama with Llama 3 RoPE factors as Q5_K_M; every target adapted; the
# adapter must lower the NLL of its training text by more than 1 nat
for spec in "qwen3 q4_k_m --head-dim 96" "llama q5_k_m --rope-llama3 8,1,4,32"; do
	set -- $spec
	a=$1 t=$2
	shift 2
	expect_rc "init-model $a $t" 0 "$BIN" init-model --out "$DIR/$a.gguf" --dim 256 --layers 2 \
		--heads 4 --kv-heads 2 --ffn 256 --ctx 64 --arch "$a" --type "$t" --seed 4 "$@"
	expect_rc "train LoRA $a $t" 0 "$BIN" train --model "$DIR/$a.gguf" --data "$DIR/logs.txt" \
		--out "$DIR/lora-$a" --steps 40 --lr 2e-2 --batch 4 --ctx 64 --rank 4 --alpha 8 --seed 5 --threads 2
	grep '^done' "$DIR/out"
	check "$a $t: adapter written" "[ -s '$DIR/lora-$a/adapter_model.safetensors' ]"
	expect_rc "eval $a base" 0 "$BIN" eval --model "$DIR/$a.gguf" --data "$DIR/logs.txt" --ctx 64
	e0=$(nll_of "$DIR/out")
	expect_rc "eval $a --adapter" 0 "$BIN" eval --model "$DIR/$a.gguf" --data "$DIR/logs.txt" --ctx 64 \
		--adapter "$DIR/lora-$a"
	e1=$(nll_of "$DIR/out")
	echo "$a $t: nll base $e0, with adapter $e1"
	check "$a $t: LoRA lowered the NLL by > 1 nat" "lt $e1 $(awk -v x="$e0" 'BEGIN{print x-1}')"
done

# errors
printf '{"text": "ok"}\n{"text": "ok"\n' >"$DIR/bad.jsonl"
expect_rc "bad JSONL" 1 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/bad.jsonl" --out "$DIR/x" --steps 1
check "message names file and line" "grep -q 'bad.jsonl:2:' '$DIR/err'"
printf 'caf\xe9\n' >"$DIR/latin1.txt"
expect_rc "non-UTF-8 text" 1 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/latin1.txt" --out "$DIR/x" --steps 1
check "message says UTF-8" "grep -q 'UTF-8' '$DIR/err'"
: >"$DIR/empty.txt"
expect_rc "empty data" 1 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/empty.txt" --out "$DIR/x" --steps 1
expect_rc "missing --out" 2 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/logs.txt"
expect_rc "--steps and --epochs" 2 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/logs.txt" \
	--out "$DIR/x" --steps 2 --epochs 1
expect_rc "--full with --base-quant" 2 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/logs.txt" \
	--out "$DIR/x" --full --base-quant q8_0
expect_rc "bad target" 2 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/logs.txt" --out "$DIR/x" \
	--targets attn_q,mlp
expect_rc "ctx beyond the model" 2 "$BIN" train --model "$DIR/base.gguf" --data "$DIR/logs.txt" \
	--out "$DIR/x" --ctx 65
expect_rc "eval --adapter for another model" 1 "$BIN" eval --model "$DIR/base.gguf" --data "$DIR/logs.txt" \
	--adapter "$DIR/nowhere"

echo "$pass passed, $fails failed"
[ "$fails" = 0 ]
