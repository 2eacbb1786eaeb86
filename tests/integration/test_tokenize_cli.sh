#!/usr/bin/env bash
# test_tokenize_cli — `fedlora-node tokenize` through the binary, on a model
# made by init-model (built-in byte vocabulary, so no shared data needed):
# ids of a text, stdin vs --text, --jsonl, BOS from the metadata and
# --no-add-special, and the errors (exit 2 for usage, 1 naming the file or
# the input line at fault). The tokenizers themselves are checked by
# test_tokenizer and test_tokenizer_parity.
set -u
BIN=${FEDLORA_NODE_BIN:?FEDLORA_NODE_BIN not set}
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
fails=0
check() { # check NAME WANT GOT
	if [ "$2" = "$3" ]; then echo "ok   - $1"; else
		echo "FAIL - $1: got '$3', want '$2'"
		fails=$((fails + 1))
	fi
}
"$BIN" init-model --out "$DIR/m.gguf" --dim 32 --layers 1 --heads 2 --ffn 64 --ctx 32 >/dev/null || exit 1
# byte vocabulary: 1 <s>, bytes at 3 + value, 259 the escaped space
check "text: BOS then bytes" "1 107 108 259 107" "$("$BIN" tokenize --model "$DIR/m.gguf" --text "hi h")"
check "stdin as --text" "1 107 108 259 107" "$(printf 'hi h' | "$BIN" tokenize --model "$DIR/m.gguf")"
check "--no-add-special" "107 108" "$("$BIN" tokenize --model "$DIR/m.gguf" --text hi --no-add-special)"
check "--jsonl: one line per string" "$(printf '1 107\n1 13 259\n')" \
	"$(printf '"h"\n"\\n "\n' | "$BIN" tokenize --model "$DIR/m.gguf" --jsonl)"
check "empty text: BOS only" "1" "$("$BIN" tokenize --model "$DIR/m.gguf" --text "")"

err=$(printf '"ok"\nnot json\n' | "$BIN" tokenize --model "$DIR/m.gguf" --jsonl 2>&1 >/dev/null)
rc=$?
check "bad JSONL line: exit 1" 1 "$rc"
case $err in *"line 2: not a JSON string"*) echo "ok   - names the line" ;; *)
	echo "FAIL - message: $err"
	fails=$((fails + 1))
	;;
esac
err=$("$BIN" tokenize --model "$DIR/none.gguf" --text x 2>&1)
check "missing model: exit 1" 1 "$?"
case $err in *none.gguf*) echo "ok   - names the file" ;; *)
	echo "FAIL - message: $err"
	fails=$((fails + 1))
	;;
esac
"$BIN" tokenize --text x >/dev/null 2>&1
check "no --model: usage, exit 2" 2 "$?"
"$BIN" tokenize --model "$DIR/m.gguf" --text x --jsonl >/dev/null 2>&1
check "--text with --jsonl: exit 2" 2 "$?"
"$BIN" tokenize --model "$DIR/m.gguf" --bogus >/dev/null 2>&1
check "unknown option: exit 2" 2 "$?"
[ "$fails" = 0 ]
