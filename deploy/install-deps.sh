#!/usr/bin/env bash
# Installs the Debian packages fedlora needs to build, run and test, and only
# those that are missing. Idempotent: when everything is present it prints one
# line and exits 0 without touching apt. Works as root or through sudo.
#
#   deploy/install-deps.sh            build + runtime + test packages
#   deploy/install-deps.sh --runtime  runtime libraries only (containers)
#   deploy/install-deps.sh --packages P...  exactly these (NAME or NAME:ARCH;
#                                     deploy/cross-arm64.sh uses it)
set -euo pipefail

build_pkgs=(
  build-essential cmake pkg-config
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
  libssl-dev openssl libopenblas-dev libinih-dev libcjson-dev
  libmicrohttpd-dev
)
test_pkgs=(
  libcmocka-dev clang libclang-rt-14-dev libomp-14-dev llvm
  gnuplot-nox iproute2 procps psmisc python3 git curl docker-compose
)
runtime_pkgs=(
  libzmq5 libprotobuf-c1 libssl3 openssl libopenblas0 libinih1 libcjson1
  libmicrohttpd12 libgomp1
)

case "${1:-}" in
  --runtime) want=("${runtime_pkgs[@]}") ;;
  --packages)
    shift
    want=("$@")
    ;;
  "") want=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  -h | --help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "install-deps.sh: unknown option '$1' (try --help)" >&2
    exit 2
    ;;
esac

missing=()
for p in "${want[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$st" in
    *" installed") ;;
    *) missing+=("$p") ;;
  esac
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#want[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo)
  else
    echo "install-deps: not root and no sudo; install these yourself: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet; refresh them once.
"${sudo_cmd[@]}" apt-get update -q
# --no-remove: a conflict (e.g. an :arm64 -dev package against the host's)
# fails here rather than removing installed packages.
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends --no-remove "${missing[@]}"
echo "install-deps: done"
