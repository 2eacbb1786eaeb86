# shellcheck shell=bash
# cli_lib.sh — helpers for the shell integration tests (sourced, not a test:
# only test_*.sh and slow_*.sh are registered). Needs $DIR (a scratch
# directory). Counts into $pass / $fails; a test ends with
#   echo "NAME: $pass passed, $fails failed"; [ "$fails" = 0 ]
fails=0
pass=0
ok() { pass=$((pass + 1)); echo "ok   - $1"; }
bad() { fails=$((fails + 1)); echo "FAIL - $1"; }
# check NAME EXPR: EXPR (eval'd) must succeed; on failure the last
# command's output ($DIR/out, $DIR/err) is shown
check() { if eval "$2"; then ok "$1"; else
	bad "$1"
	cat "$DIR/out" "$DIR/err" 2>/dev/null | head -20
fi; }
# expect_rc NAME RC CMD... : runs CMD (output in $DIR/out, $DIR/err), checks its exit code
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
