# shellcheck shell=bash
# quality_lib.sh — sourced by the quality experiment tests (not a test):
# sets src, build and shared, and exits 77 (skipped, with the reason) when
# the shared corpora, the binaries or the openssl CLI are missing.
src=${FEDLORA_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${FEDLORA_BUILD:-$src/build}
shared=${FEDLORA_SHARED:-}
if [[ -z $shared || ! -f $shared/data/warpeace.txt || ! -f $shared/data/tinyshakespeare.txt ]]; then
  echo "SKIP: FEDLORA_SHARED/data/ with warpeace.txt and tinyshakespeare.txt not found (FEDLORA_SHARED=$shared)"
  exit 77
fi
for b in fedlora-node fedlora-coordinator; do
  [[ -x $build/$b ]] || {
    echo "SKIP: $build/$b not built"
    exit 77
  }
done
command -v openssl >/dev/null || {
  echo "SKIP: openssl CLI needed by deploy/certs.sh"
  exit 77
}
