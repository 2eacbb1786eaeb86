#!/usr/bin/env bash
# Cross-builds fedlora for aarch64 (64-bit ARM) on a Debian 12 x86-64 host and
# runs its tests under qemu-user. Installs what it needs (as root or through
# sudo): the cross compiler, qemu-user, and the :arm64 -dev packages of every
# library the project links (after dpkg --add-architecture arm64).
#
#   deploy/cross-arm64.sh                install, configure, build, test
#   deploy/cross-arm64.sh --install      install the packages only
#   deploy/cross-arm64.sh --build        install + configure + build, no tests
#   deploy/cross-arm64.sh --ctest-args   print the default ctest selection
#
# Environment:
#   FEDLORA_ARM64_BUILD=DIR   build directory (default build-arm64)
#   FEDLORA_TEST_JOBS=N       parallel build and ctest jobs (default 2)
#   FEDLORA_ARM64_CMAKE_ARGS=...  extra configure arguments (the container
#                             build passes -DFEDLORA_TESTS=OFF)
#   FEDLORA_ARM64_CTEST=...   ctest selection (default: the unit label -- the
#                             unit suite and every fuzz corpus replay -- but
#                             the tests in qemu_slow below)
#
# Tests run through CMAKE_CROSSCOMPILING_EMULATOR (cmake/aarch64-linux-gnu.cmake),
# so ctest starts each test executable under qemu-aarch64; tests that start
# fedlora-node / fedlora-coordinator themselves get wrapper scripts
# (build-arm64/tests/emu/). The cross-architecture federation is
# tests/xarch/fed_xarch.c, run by the arm64 stage of tests/run.sh.
set -euo pipefail
# Unit tests left out under emulation: each runs 13-45 s natively (finite
# differences, GPTQ, whole training runs in double precision) and over 200 s
# under qemu-user, whose floating point is emulated in software. They run
# natively on x86-64 in every build; on aarch64 hardware run ctest -L unit.
qemu_slow=(test_export test_grad test_train test_train_kern)
default_ctest="-L unit -E ^($(
  IFS='|'
  echo "${qemu_slow[*]}"
))\$"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bdir=${FEDLORA_ARM64_BUILD:-build-arm64}
jobs=${FEDLORA_TEST_JOBS:-2}
mode=${1:-all}
case "$mode" in
  all | --install | --build) ;;
  --ctest-args)
    echo "$default_ctest"
    exit 0
    ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "cross-arm64.sh: unknown option '$mode' (try --help)" >&2
    exit 2
    ;;
esac

# Host tools, then the target's libraries (the same list as the build_pkgs of
# deploy/install-deps.sh, plus cmocka for the tests and libgomp for OpenMP).
host_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
  pkg-config cmake protobuf-c-compiler)
arm_pkgs=(libzmq3-dev libprotobuf-c-dev libssl-dev libopenblas-dev libinih-dev
  libcjson-dev libmicrohttpd-dev libcmocka-dev libgomp1 libc6)

want=("${host_pkgs[@]}")
for p in "${arm_pkgs[@]}"; do want+=("$p:arm64"); done
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "cross-arm64: dpkg --add-architecture arm64"
  if [ "$(id -u)" -eq 0 ]; then
    dpkg --add-architecture arm64
  else
    sudo dpkg --add-architecture arm64
  fi
fi
# installs only what is missing (apt-get update first), never removes
bash "$root/deploy/install-deps.sh" --packages "${want[@]}"
[ "$mode" = --install ] && exit 0

echo "cross-arm64: configure $bdir"
# shellcheck disable=SC2086
cmake -S . -B "$bdir" -DCMAKE_TOOLCHAIN_FILE="$root/cmake/aarch64-linux-gnu.cmake" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFEDLORA_BENCH=OFF ${FEDLORA_ARM64_CMAKE_ARGS:-} \
  >"$bdir.log" 2>&1 ||
  { cat "$bdir.log"; exit 1; }
echo "cross-arm64: build ($jobs jobs)"
cmake --build "$bdir" -j "$jobs" >>"$bdir.log" 2>&1 || { tail -60 "$bdir.log"; exit 1; }
file "$bdir/fedlora-node" 2>/dev/null || true
[ "$mode" = --build ] && exit 0

# OpenMP threads that spin while waiting cost whole time slices under
# emulation on shared cores: wait passively.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
echo "cross-arm64: not run under qemu (too slow emulated): ${qemu_slow[*]}"
# shellcheck disable=SC2086
cd "$bdir" && exec ctest --output-on-failure -j "$jobs" ${FEDLORA_ARM64_CTEST:-$default_ctest}
