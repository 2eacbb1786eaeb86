#!/usr/bin/env bash
# compose-up.sh — the container fleet of deploy/docker-compose.yml, built,
# brought up, followed round by round and torn down, in one command.
#
#   deploy/compose-up.sh [--nodes N] [--rounds R] [--keep] [options]
#
# Installs what is missing (docker.io, docker-compose; debootstrap when the
# base image must be built), starts dockerd if none is running (and stops it
# at the end if it started it), makes the Debian base image (debian:12-slim:
# reused if present, pulled if a registry answers, else built from Debian's
# archive with debootstrap and `docker import`), builds the fedlora image
# (layer cache), brings up `prepare` (CA, certificates, base model, one data
# shard per node), the coordinator and N nodes on an internal network, prints
# each committed round as it happens, then the same per-round table as
# deploy/quickstart.sh, checks that every node recorded the final version
# with the SHA-256 of the version the coordinator stored (and that
# `fedlora-coordinator status` verifies that stored version), and tears
# everything down (containers, network, volumes) unless --keep.
#
# Exit status 0 only when the federated held-out loss went down, every node
# exited 0 after the federation finished and the final-version check holds.
#
# Options:
#   --nodes N              node containers (1..99, default 3)
#   --rounds R             committed rounds before the federation ends (1..99, default 3)
#   --keep                 leave the fleet up (and its volumes) at the end
#   --project NAME         compose project name (default fedlora)
#   --out DIR              logs, journal, node metrics, table (default ./build-compose/NAME)
#   --rate R --delay D --loss L
#                          every node shapes its egress with tc: tbf rate (e.g.
#                          10mbit); netem delay (40ms) / loss (1%) when the
#                          kernel has netem (the node log says when it has not)
#   --flap I:ROUND:SECS    disconnect node I's container from the network when
#                          ROUND starts, reconnect it SECS seconds later
#                          (docker network disconnect/connect); repeatable
#   --kill-coordinator ROUND
#                          `docker kill` the coordinator while ROUND is open,
#                          then `docker start` it: it resumes from its volume
#                          (the last committed version; ROUND is not committed).
#                          rounds.max_rounds counts the rounds a coordinator
#                          process commits, so the restarted one commits R more:
#                          ROUND-1+R rounds in all
#   --timeout SECS         give up after this long (default 120 + 60 x rounds)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/docker-lib.sh
source "$here/deploy/docker-lib.sh"

nodes=3 rounds=3 keep=0 project=fedlora out="" rate="" delay="" loss="" kill_round=0 timeout=0
flaps=()
DK_PROG=compose-up
die() { dk_die "$@"; }
usage() { dk_usage "$0" "${1:-0}"; }
need() { dk_need "$@"; }
while [ $# -gt 0 ]; do
	case "$1" in
	--nodes) need "$@"; nodes=$2; shift 2 ;;
	--rounds) need "$@"; rounds=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	--project) need "$@"; project=$2; shift 2 ;;
	--out) need "$@"; out=$2; shift 2 ;;
	--rate) need "$@"; rate=$2; shift 2 ;;
	--delay) need "$@"; delay=$2; shift 2 ;;
	--loss) need "$@"; loss=$2; shift 2 ;;
	--flap) need "$@"; flaps+=("$2"); shift 2 ;;
	--kill-coordinator) need "$@"; kill_round=$2; shift 2 ;;
	--timeout) need "$@"; timeout=$2; shift 2 ;;
	-h | --help) usage 0 ;;
	*) die "unknown option '$1' (try --help)" ;;
	esac
done
[[ $nodes =~ ^[1-9][0-9]?$ ]] || die "--nodes must be 1..99, not '$nodes'"
[[ $rounds =~ ^[1-9][0-9]?$ ]] || die "--rounds must be 1..99, not '$rounds'"
[[ $project =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "--project must be lower-case letters, digits, - and _"
[[ $kill_round =~ ^[0-9]+$ ]] && ((kill_round <= rounds)) ||
	die "--kill-coordinator must be a round 1..$rounds"
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be seconds"
((timeout > 0)) || timeout=$((120 + 60 * rounds))
for f in "${flaps[@]}"; do
	[[ $f =~ ^([0-9]+):([0-9]+):([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= nodes)) ||
		die "--flap must be NODE:ROUND:SECONDS with NODE 1..$nodes, not '$f'"
done
out=${out:-$here/build-compose/$project}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/*.log "$out"/*.jsonl "$out"/*.json "$out"/table.txt

t_start=$(dk_ms)
since() { echo "$(((($(dk_ms) - t_start) + 500) / 1000))s"; }
step() { printf '\n== %s (%s)\n' "$*" "$(since)"; }

compose() { dk_compose -p "$project" -f "$here/deploy/docker-compose.yml" "$@"; }
export FLEET_NODES=$nodes MIN_NODES=$nodes ROUNDS=$rounds
export FLEET_NODE_RATE=$rate FLEET_NODE_DELAY=$delay FLEET_NODE_LOSS=$loss

up=0
finish() {
	local rc=$?
	if ((up)); then
		compose logs --no-color -t >"$out/compose.log" 2>&1 || true
		if ((keep)); then
			printf '\nthe fleet stays up (--keep): %s -p %s -f deploy/docker-compose.yml down -v\n' \
				"$(docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)" "$project"
		else
			compose down -v --remove-orphans >"$out/down.log" 2>&1 || true
			local left
			left=$(
				docker ps -aq --filter "label=com.docker.compose.project=$project"
				docker network ls -q --filter "label=com.docker.compose.project=$project"
				docker volume ls -q --filter "label=com.docker.compose.project=$project"
			)
			if [ -n "$left" ]; then
				printf 'compose-up: teardown left Docker objects of project %s behind\n' "$project" >&2
				((rc)) || rc=1
			else
				printf 'torn down: no containers, networks or volumes of project %s left\n' "$project"
			fi
		fi
	fi
	dk_engine_down || true
	exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ engine, images
step "Docker engine"
dk_install || die "cannot install the Docker engine"
dk_engine_up || die "no Docker engine"
dk_say "engine $(docker version -f '{{.Server.Version}}' 2>/dev/null), compose: $(dk_compose version --short 2>/dev/null | head -1)"
step "base image"
t0=$(dk_ms)
dk_base_image || die "no base image"
echo "base_image_ms $(($(dk_ms) - t0))" >"$out/timings.txt"
step "fedlora image"
t0=$(dk_ms)
dk_build "$out/build.log" || die "image build failed"
echo "image_build_ms $(($(dk_ms) - t0))" >>"$out/timings.txt"

# ------------------------------------------------------------ bring-up
step "bring-up: prepare, coordinator, $nodes nodes (project $project)"
compose down -v --remove-orphans >/dev/null 2>&1 || true # a previous run's leftovers
up=1
t0=$(dk_ms)
compose up -d --no-build --scale node="$nodes" >"$out/up.log" 2>&1 || {
	cat "$out/up.log" >&2
	compose logs --no-color prepare >&2 || true
	die "docker-compose up failed"
}
echo "bring_up_ms $(($(dk_ms) - t0))" >>"$out/timings.txt"
# containers by label, stopped ones included (`compose ps` of v2 lists only running ones)
svc_cids() { docker ps -aq --filter "label=com.docker.compose.project=$project" \
	--filter "label=com.docker.compose.service=$1"; }
coord=$(svc_cids coordinator)
[ -n "$coord" ] || die "no coordinator container"
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$coord" | awk '{print $1}')
node_cid() { docker ps -aq --filter "label=com.docker.compose.project=$project" \
	--filter "label=com.docker.compose.service=node" --filter "label=com.docker.compose.container-number=$1"; }
dk_say "up in $((($(dk_ms) - t0) / 1000)) s; network $net (internal); coordinator ${coord:0:12}"

# ------------------------------------------------------------ follow
# Peak memory per container from its cgroup (v1: memory.max_usage_in_bytes,
# v2: memory.peak), sampled while it runs: usage including page cache.
declare -A peak=() cg=()
sample_mem() {
	local c f v name
	for c in $(docker ps -q --no-trunc --filter "label=com.docker.compose.project=$project"); do
		if [ -z "${cg[$c]:-}" ]; then
			for f in /sys/fs/cgroup/memory/docker/$c/memory.max_usage_in_bytes \
				/sys/fs/cgroup/system.slice/docker-$c.scope/memory.peak \
				/sys/fs/cgroup/docker/$c/memory.peak; do
				[ -r "$f" ] && cg[$c]=$f && break
			done
			[ -n "${cg[$c]:-}" ] || cg[$c]=none
		fi
		[ "${cg[$c]}" != none ] || continue
		v=$(cat "${cg[$c]}" 2>/dev/null) || continue
		name=$(docker inspect -f '{{.Name}}' "$c" 2>/dev/null) || continue
		name=${name#/}
		((v > ${peak[$name]:-0})) && peak[$name]=$v
	done
	return 0
}
# "healthy/total" over the project's running containers with a health check
health_count() {
	docker ps -q --filter "label=com.docker.compose.project=$project" |
		xargs -r docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' |
		awk 'NF {n++; if ($1 == "healthy") h++} END {printf "%d/%d\n", h, n}'
}
journal() { docker cp "$coord:/var/lib/fedlora/state/journal.jsonl" - 2>/dev/null | tar -xO 2>/dev/null || true; }
coord_state() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$coord"; }

step "federating: $rounds rounds"
deadline=$(($(date +%s) + timeout))
seen_end=0 killed=0 health_seen=0
declare -A flap_at=() # "cid until" of disconnected nodes
t_rounds=$(dk_ms)
while :; do
	sample_mem
	j=$(journal)
	started=$(grep -c '"type":"round_start"' <<<"$j" || true)
	ended=$(grep '"type":"round_end"' <<<"$j" | grep -c '"committed":true' || true)
	if ((ended > seen_end)); then
		grep '"type":"round_end"' <<<"$j" | grep '"committed":true' | tail -n $((ended - seen_end)) |
			while read -r l; do
				r=$(grep -o '"round":[0-9]*' <<<"$l" | head -1 | cut -d: -f2)
				ms=$(grep -o '"round_ms":[0-9]*' <<<"$l" | head -1 | cut -d: -f2)
				printf 'round %s committed (%s ms; %s)\n' "$r" "${ms:-?}" "$(since)"
			done
		seen_end=$ended
	fi
	# the health checks, once everything is up: coordinator + N nodes healthy
	if ((!health_seen && ended >= 1)) && [ "$(health_count)" = "$((nodes + 1))/$((nodes + 1))" ]; then
		dk_say "health: the coordinator and all $nodes nodes report healthy ($(since))"
		health_seen=1
	fi
	# the kill test: the coordinator dies while round kill_round is open
	if ((kill_round && !killed && started >= kill_round && ended < kill_round)); then
		sleep 1 # into the round: nodes are training
		dk_say "docker kill the coordinator during round $kill_round ($(since))"
		docker kill "$coord" >/dev/null
		sleep 2
		docker start "$coord" >/dev/null
		dk_say "docker start the coordinator: it resumes from its state volume ($(since))"
		killed=1
		continue
	fi
	# link flaps
	for i in "${!flaps[@]}"; do
		IFS=: read -r fn fr fs <<<"${flaps[$i]}"
		if ((started >= fr)); then
			c=$(node_cid "$fn")
			docker network disconnect "$net" "$c"
			dk_say "link of node container $fn down for ${fs}s (round $fr; $(since))"
			flap_at[$c]=$(($(date +%s) + fs))
			unset "flaps[$i]"
		fi
	done
	for c in "${!flap_at[@]}"; do
		if (($(date +%s) >= flap_at[$c])); then
			docker network connect "$net" "$c"
			[ -z "$rate$delay$loss" ] || docker exec "$c" fedlora-entrypoint shape >/dev/null 2>&1 ||
				dk_say "re-shaping the reconnected link failed"
			dk_say "link up again ($(since))"
			unset "flap_at[$c]"
		fi
	done
	read -r st code <<<"$(coord_state)"
	if [ "$st" = exited ] && ((${#flap_at[@]} == 0)); then
		[ "$code" = 0 ] || die "the coordinator exited with status $code (see $out/compose.log)"
		break
	fi
	(($(date +%s) < deadline)) || die "the federation did not finish within ${timeout}s"
	sleep 1
done
echo "rounds_ms $(($(dk_ms) - t_rounds))" >>"$out/timings.txt"
((health_seen)) || dk_say "health: never saw the coordinator and all $nodes nodes healthy at once"
dk_say "the coordinator finished: $(journal | grep '"type":"round_end"' | grep -c '"committed":true') rounds committed in all ($(since))"

# nodes stop by themselves when the coordinator says the federation is finished
nodes_ok=1
for _ in $(seq 1 60); do
	[ -z "$(svc_cids node | xargs -r docker inspect -f '{{.State.Running}}' | grep true)" ] && break
	sleep 1
done
n_node=0
for c in $(svc_cids node); do
	n_node=$((n_node + 1))
	read -r name st code <<<"$(docker inspect -f '{{.Name}} {{.State.Status}} {{.State.ExitCode}}' "$c")"
	if [ "$st" != exited ] || [ "$code" != 0 ]; then
		dk_say "node container ${name#/}: $st, exit status $code (expected: exited 0)"
		nodes_ok=0
	fi
done
if ((n_node != nodes)); then
	dk_say "found $n_node node containers, expected $nodes"
	nodes_ok=0
fi
((nodes_ok)) && dk_say "all $nodes node containers exited 0 by themselves"

# ------------------------------------------------------------ results
step "results"
compose logs --no-color -t >"$out/compose.log" 2>&1 || true
journal >"$out/journal.jsonl"
vol() { echo "${project}_$1"; }
# what the coordinator stored, verified by its own status command
docker run --rm --network none -v "$(vol coord-state):/s:ro" "$DK_IMAGE" \
	fedlora-coordinator status --state-dir /s --json >"$out/status.json" 2>"$out/status.err" ||
	die "fedlora-coordinator status failed: $(cat "$out/status.err")"
grep -q 'does not verify' "$out/status.err" && die "a stored version does not verify: $(cat "$out/status.err")"
docker run --rm --network none -v "$(vol fleet):/fleet:ro" "$DK_IMAGE" \
	bash -c 'for d in /fleet/nodes/node-*; do cat "$d/metrics.jsonl"; done' >"$out/metrics.jsonl" ||
	die "cannot read the nodes' metrics"
# status.json is pretty-printed: its first "version" and "sha256" are the
# current (final) version's
st_json=$(tr -d ' \t\n' <"$out/status.json")
fv=$(grep -o '"version":[0-9]*' <<<"$st_json" | head -1 | cut -d: -f2) || true
fsha=$(grep -o '"sha256":"[0-9a-f]*"' <<<"$st_json" | head -1 | cut -d'"' -f4) || true
[ -n "$fv" ] && [ ${#fsha} = 64 ] || die "no final version in $out/status.json"
# every node: the committed RoundEnd of that version carries the same SHA-256
final_ok=1
for i in $(seq 1 "$nodes"); do
	id=$(printf 'node-%02d' "$i")
	got=$(grep "\"node\":\"$id\"" "$out/metrics.jsonl" | grep '"type":"round"' |
		grep '"committed":true' | grep "\"version\":$fv," | grep -o '"sha256":"[0-9a-f]*"' |
		tail -1 | cut -d'"' -f4) || true
	if [ "$got" != "$fsha" ]; then
		dk_say "$id: final version $fv recorded with SHA-256 '${got:-none}', coordinator stored $fsha"
		final_ok=0
	fi
done
((final_ok)) && dk_say "final version $fv, SHA-256 ${fsha:0:16}...: stored and verified by the coordinator, the same on all $nodes nodes"

# round ids run past --rounds after a coordinator restart (see --kill-coordinator)
last_round=$(grep '"type":"round_end"' "$out/journal.jsonl" | grep -o '"round":[0-9]*' |
	cut -d: -f2 | sort -n | tail -1) || true
awk -v nodes="$nodes" -v rounds="${last_round:-$rounds}" -f "$here/deploy/rounds-table.awk" \
	"$out/journal.jsonl" "$out/metrics.jsonl" | tee "$out/table.txt" && verdict=0 || verdict=${PIPESTATUS[0]}

printf '\npeak memory per container (cgroup, includes page cache):\n'
if ((${#peak[@]})); then
	for k in $(printf '%s\n' "${!peak[@]}" | sort); do
		printf '  %-32s %6.1f MiB\n' "$k" "$(awk -v b="${peak[$k]}" 'BEGIN{print b/1048576}')"
	done | tee "$out/memory.txt"
else
	echo "  (no cgroup memory files readable on this host)" | tee "$out/memory.txt"
fi
dk_say "timings (ms): $(tr '\n' ' ' <"$out/timings.txt")"
dk_say "logs, journal, node metrics and the table: $out ($(since) in all)"
((verdict == 0 && nodes_ok && final_ok)) || exit 1
exit 0
