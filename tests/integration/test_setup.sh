#!/usr/bin/env bash
# test_setup — the set-up a new user goes through:
#   - a second configure of a fresh build folder rewrites no flags.make (it
#     used to move libzmq's "-isystem /usr/include/mit-krb5" from the
#     include flags to the C flags, so the next build recompiled everything),
#     and a build after it compiles nothing;
#   - `cmake --install` of this build: the installed quickstart runs from the
#     prefix (2 rounds, a short pretraining) and writes nothing inside the
#     prefix; netsim.sh, certs.sh, plot.sh, rounds-table.awk and the systemd
#     units are installed, the units verify (systemd-analyze, when present).
set -u
SRC=${FEDLORA_SRC:?FEDLORA_SRC not set}
BUILD=${FEDLORA_BUILD:?FEDLORA_BUILD not set}
DIR=$(mktemp -d /tmp/fltest.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
# shellcheck source=tests/integration/cli_lib.sh
. "$(dirname "$0")/cli_lib.sh"

# ---- configure twice
cfg() { cmake -S "$SRC" -B "$DIR/b" -DCMAKE_BUILD_TYPE=Debug -DFEDLORA_TESTS=OFF -DFEDLORA_BENCH=OFF >"$DIR/cfg.log" 2>&1; }
sums() { (cd "$DIR/b" && find . -name flags.make | sort | xargs md5sum); }
# fresh configure, build, configure, build: the order a second quickstart
# run goes through (the smallest library that uses libzmq keeps it short)
bld() { cmake --build "$DIR/b" --target fedlora_common -j2 >"$DIR/$1.log" 2>&1; }
if cfg && sums >"$DIR/f1" && bld b1 && cfg && sums >"$DIR/f2" && bld b2; then
	check "second configure leaves every flags.make as it was ($(wc -l <"$DIR/f1") files)" \
		"[ -s '$DIR/f1' ] && cmp -s '$DIR/f1' '$DIR/f2'"
	check "libzmq's -isystem stays an include directory" \
		"! grep -h '^C_FLAGS' \$(find '$DIR/b' -name flags.make) | grep -q isystem"
	n1=$(grep -c 'Building C object' "$DIR/b1.log")
	n2=$(grep -c 'Building C object' "$DIR/b2.log")
	check "the build after the second configure compiles nothing ($n1 then $n2 objects)" \
		"[ '$n1' -gt 0 ] && [ '$n2' = 0 ]"
else
	bad "configure or build failed"
	tail -20 "$DIR/cfg.log" "$DIR/b1.log" "$DIR/b2.log" 2>/dev/null
fi
rm -rf "$DIR/b"

# ---- the installed tree
P=$DIR/prefix
if cmake --install "$BUILD" --prefix "$P" >"$DIR/install.log" 2>&1; then ok "cmake --install"; else
	bad "cmake --install failed"
	cat "$DIR/install.log"
fi
S=$P/share/fedlora/scripts
for f in "$P/bin/fedlora-node" "$P/bin/fedlora-coordinator" "$S/quickstart.sh" "$S/certs.sh" \
	"$S/plot.sh" "$S/netsim.sh"; do
	check "installed and executable: ${f#"$P"/}" "[ -x '$f' ]"
done
check "installed: rounds-table.awk" "[ -r '$S/rounds-table.awk' ]"
check "not installed: scripts that need the source tree" \
	"[ ! -e '$S/install-deps.sh' ] && [ ! -e '$S/compose-up.sh' ]"
check "installed netsim.sh answers --help" "bash '$S/netsim.sh' --help 2>&1 | grep -q -- '--nodes N'"
for u in fedlora-coordinator.service fedlora-node@.service; do
	check "installed: systemd unit $u" "[ -r '$P/share/fedlora/systemd/$u' ]"
done
if command -v systemd-analyze >/dev/null; then
	mkdir -p "$DIR/units"
	sed "s|/usr/local/bin|$P/bin|" "$P/share/fedlora/systemd/fedlora-coordinator.service" >"$DIR/units/fedlora-coordinator.service"
	sed "s|/usr/local/bin|$P/bin|" "$P/share/fedlora/systemd/fedlora-node@.service" >"$DIR/units/fedlora-node@x.service"
	for u in "$DIR"/units/*; do
		systemd-analyze verify "$u" >"$DIR/out" 2>"$DIR/err"
		check "systemd-analyze verify $(basename "$u")" "[ ! -s '$DIR/err' ]"
	done
else
	echo "note: systemd-analyze not installed, units not verified"
fi

if grep -q '^FEDLORA_SANITIZE:STRING=.\+' "$BUILD/CMakeCache.txt"; then
	echo "SKIPPED: the installed quickstart run (a sanitizer build is too slow for it; the normal build runs it)"
else
	touch "$DIR/mark"
	mkdir "$DIR/cwd"
	(cd "$DIR/cwd" && FEDLORA_QS_ROUNDS=2 FEDLORA_QS_PRETRAIN_STEPS=30 timeout 540 bash "$S/quickstart.sh") >"$DIR/qs.log" 2>&1
	rc=$?
	check "the installed quickstart runs from the prefix (exit $rc)" "[ $rc = 0 ]" || true
	[ $rc = 0 ] || tail -30 "$DIR/qs.log"
	check "it used the prefix's binaries" "grep -q 'binaries in $P/bin' '$DIR/qs.log'"
	check "it ran in ./fedlora-quickstart" "[ -s '$DIR/cwd/fedlora-quickstart/coord-state/journal.jsonl' ]"
	new=$(find "$P" -newer "$DIR/mark" | head -5)
	check "it wrote nothing inside the prefix${new:+ ($new)}" "[ -z '$new' ]"
	check "it prints the round table and the final version's loss" \
		"grep -q '^round nodes' '$DIR/qs.log' && grep -q '^final version: mean held-out loss' '$DIR/qs.log'"
fi

echo "test_setup: $pass passed, $fails failed"
[ "$fails" = 0 ]
