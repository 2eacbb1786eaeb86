#!/usr/bin/env bash
# The container fleet for real (tests/run.sh stage "docker"): a Docker engine
# (installed and started here if missing; stopped at the end if started
# here), the Debian base image built from the archive when no registry
# answers (cached: reused when present), the fedlora image, then two fleets
# with deploy/compose-up.sh:
#   1. a coordinator and 3 nodes, 2 rounds, egress shaped with tc, one link
#      flap: every container reports healthy, every node exits 0 by itself,
#      every node recorded the final version with the SHA-256 of the version
#      the coordinator stored (and `fedlora-coordinator status` verifies), the
#      federated loss went down;
#   2. the kill test: 3 nodes, `docker kill` of the coordinator while round
#      2 is open and `docker start`: it resumes from its state volume at
#      version 1, round 2 is never committed, the next round builds on
#      version 1, and the federation finishes (nodes exit 0, final SHA-256
#      checks as in 1).
#   3. a Docker Swarm stack with coordinator tiers (deploy/stack-up.sh
#      --nodes 4 --regions 2: a single-node swarm, certificates as secrets,
#      root, 2 regional coordinators and 2 x 2 nodes as services on an
#      overlay network): 2 root rounds commit with both regions' updates and
#      every region and node task completes.
# After each fleet: no containers, networks or volumes of its project left.
# Exit 0 pass, 1 fail, 77 skipped (only when no Docker engine can be
# started; the line says why).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=deploy/docker-lib.sh
source "$root/deploy/docker-lib.sh"
out=${FEDLORA_DOCKER_OUT:-$root/build-compose}
mkdir -p "$out"
fail=0
bad() {
	echo "FAIL: $*"
	fail=1
}
ok() { echo "ok: $*"; }

if ! dk_install debootstrap >"$out/install.log" 2>&1; then
	echo "SKIP: docker: the engine could not be installed ($(tail -n 1 "$out/install.log"))"
	exit 77
fi
# not in a $(...) subshell: dk_engine_up records whether it started dockerd
if ! dk_engine_up >"$out/engine.log" 2>&1; then
	echo "SKIP: docker: no Docker engine can be started here: $(tail -n 1 "$out/engine.log")"
	exit 77
fi
trap dk_engine_down EXIT

# leftovers of a project: containers, networks, volumes
leftovers() {
	local f="label=com.docker.compose.project=$1"
	{
		docker ps -aq --filter "$f"
		docker network ls -q --filter "$f"
		docker volume ls -q --filter "$f"
	} | wc -l
}

# fleet NAME ARGS...: deploy/compose-up.sh --project NAME ARGS, output in
# $out/NAME (+ NAME.log); its progress lines, then pass/fail on its status
fleet() {
	local name=$1 t0 rc
	shift
	t0=$(dk_ms)
	bash "$root/deploy/compose-up.sh" --project "$name" --out "$out/$name" "$@" >"$out/$name.log" 2>&1
	rc=$?
	sed -n '/^base image/p; /^image /p; /^round [0-9]* committed/p; /docker kill/p; /docker start/p' \
		"$out/$name.log"
	if [ $rc -eq 0 ]; then ok "compose-up.sh $* ($((($(dk_ms) - t0) / 1000)) s)"; else
		tail -n 40 "$out/$name.log"
		bad "compose-up.sh $* exited $rc (log: $out/$name.log)"
	fi
	grep -q "all $nodes node containers exited 0 by themselves" "$out/$name.log" &&
		ok "every node exited 0 by itself" || bad "not every node exited 0 after the federation finished"
	grep -q "health: the coordinator and all $nodes nodes report healthy" "$out/$name.log" &&
		ok "health checks: the coordinator and all $nodes nodes healthy" ||
		bad "the health checks never reported the coordinator and all nodes healthy"
}

# final_sha NAME VERSION: independently of compose-up's own check, the
# coordinator's stored final version (status --json, which verifies it) is
# VERSION and every node recorded that version with the same SHA-256
final_sha() {
	local st fv fsha n=0 id
	st=$(tr -d ' \t\n' <"$out/$1/status.json" 2>/dev/null)
	fv=$(grep -o '"version":[0-9]*' <<<"$st" | head -1 | cut -d: -f2)
	fsha=$(grep -o '"sha256":"[0-9a-f]\{64\}"' <<<"$st" | head -1 | cut -d'"' -f4)
	[ "$fv" = "$2" ] || bad "final version is '${fv:-none}', not $2"
	for id in $(seq -f 'node-%02g' 1 "$nodes"); do
		grep "\"node\":\"$id\"" "$out/$1/metrics.jsonl" 2>/dev/null | grep '"committed":true' |
			grep -q "\"version\":$fv,.*\"sha256\":\"$fsha\"" && n=$((n + 1))
	done
	[ -n "$fsha" ] && [ $n = "$nodes" ] &&
		ok "final version $fv: all $nodes nodes hold its SHA-256 ${fsha:0:16}..." ||
		bad "$n of $nodes nodes recorded the final version's SHA-256"
	[ "$(leftovers "$1")" = 0 ] && ok "teardown: no containers, networks or volumes left" ||
		bad "teardown left Docker objects of project $1"
}

nodes=3
# ---- 1. three nodes, two rounds; every node's egress shaped to 50 mbit/s
# (tbf), node 3's link down for 3 s when round 1 starts
fleet fedlora-ci --nodes $nodes --rounds 2 --rate 50mbit --flap 3:1:3
c=$(grep -c 'egress rate 50mbit (tbf)' "$out/fedlora-ci/compose.log" 2>/dev/null)
[ "${c:-0}" -ge "$nodes" ] && ok "tc: all $nodes nodes shaped their egress" ||
	bad "tc: ${c:-0} of $nodes nodes shaped their egress"
grep -q 'link up again' "$out/fedlora-ci.log" && ok "link flap: node 3 disconnected and reconnected" ||
	bad "the link flap did not happen"
grep -q 'VERDICT: the federated loss went down' "$out/fedlora-ci.log" && ok "the federated loss went down" ||
	bad "no falling loss in the table"
# every node verified each global version it received against its SHA-256
v=$(grep -c 'from a .* verified' "$out/fedlora-ci/compose.log" 2>/dev/null)
[ "${v:-0}" -ge 6 ] && ok "nodes verified $v received global versions by SHA-256" ||
	bad "nodes logged ${v:-0} verified global versions (expected >= 6: v0 and v1 on 3 nodes)"
final_sha fedlora-ci 2

# ---- 2. the kill test: round 1 commits version 1; the coordinator is killed
# while round 2 is open and started again; the restarted process commits 2
# more rounds (rounds.max_rounds counts per process) on top of version 1
fleet fedlora-ci-kill --nodes $nodes --rounds 2 --kill-coordinator 2
grep -q 'docker kill the coordinator during round 2' "$out/fedlora-ci-kill.log" ||
	bad "the coordinator was not killed"
# one state directory, two lives: the second "start" record is at version 1
# (read from the volume), round 2 never ended, the next round builds on v1
j=$out/fedlora-ci-kill/journal.jsonl
starts=$(grep '"type":"start"' "$j" 2>/dev/null | grep -o '"version":[0-9]*' | cut -d: -f2 | tr '\n' ' ')
[ "$starts" = "0 1 " ] && ok "the restarted coordinator resumed at version 1 from its volume" ||
	bad "start records at versions '$starts' (expected '0 1 ')"
grep '"type":"round_end"' "$j" 2>/dev/null | grep -q '"round":2,' &&
	bad "round 2 (open at the kill) has a round_end" || ok "round 2, open at the kill, was not committed"
grep '"type":"round_end"' "$j" 2>/dev/null | grep -q '"round":3,"committed":true,"version":2,"parent":1,' &&
	ok "round 3 committed version 2 on top of version 1" || bad "round 3 did not build on version 1"
final_sha fedlora-ci-kill 3

# ---- 3. a Docker Swarm stack with coordinator tiers (deploy/stack-up.sh
# --regions 2): this machine becomes a single-node swarm manager,
# certificates and keys are secrets, the root, 2 regional coordinators and
# 2 x 2 node replicas are services on an overlay network; 2 root rounds
# commit with both regions' updates, every region and node task completes
# by itself, and nothing of the stack (services, secrets, network) or the
# swarm is left.
swarm_before=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)
t0=$(dk_ms)
if bash "$root/deploy/stack-up.sh" --nodes 4 --regions 2 --rounds 2 --name fedlora-ci-stack \
	--out "$out/fedlora-ci-stack" >"$out/fedlora-ci-stack.log" 2>&1; then
	ok "stack-up.sh: $(grep -o '2 rounds committed.*' "$out/fedlora-ci-stack.log") ($((($(dk_ms) - t0) / 1000)) s)"
else
	tail -n 30 "$out/fedlora-ci-stack.log"
	bad "stack-up.sh exited non-zero (log: $out/fedlora-ci-stack.log)"
fi
grep -q 'Creating secret fedlora-ci-stack_node-03.key' "$out/fedlora-ci-stack/deploy.log" 2>/dev/null &&
	grep -q 'Creating secret fedlora-ci-stack_region-2.key' "$out/fedlora-ci-stack/deploy.log" &&
	ok "stack: certificates and keys deployed as swarm secrets" || bad "stack: no node secrets were created"
[ -z "$(docker ps -aq --filter label=com.docker.stack.namespace=fedlora-ci-stack)" ] &&
	[ -z "$(docker network ls -q --filter label=com.docker.stack.namespace=fedlora-ci-stack)" ] &&
	[ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = "$swarm_before" ] &&
	ok "stack teardown: no containers or network left, swarm state back to '$swarm_before'" ||
	bad "stack teardown left containers, a network or a changed swarm state"

exit $fail
