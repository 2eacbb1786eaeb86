#!/usr/bin/env bash
# stack-up.sh — the fleet as a Docker Swarm stack (`docker stack deploy`):
# the coordinator and N nodes as services, every certificate and key as a
# Docker secret, one overlay network that reaches nothing outside, and no
# shared volume (each node derives the base model and its own data shard,
# as the compose fleet's `prepare` does, so a stack spans machines).
#
#   deploy/stack-up.sh [--nodes N] [--regions G] [--rounds R] [--name STACK]
#                      [--keep] [--out DIR] [--timeout SECS] [--print]
#
# Makes the CA and certificates (deploy/certs.sh) in DIR/pki, writes the
# stack file DIR/stack.yml (the node service runs N replicas; replica k is
# node-k by FLEET_SLOT={{.Task.Slot}} and reads node-k's secrets), and
# unless --print: builds the image (as deploy/compose-up.sh does), makes
# this machine a single-node swarm manager when it is in no swarm (and
# leaves that swarm at the end), deploys, waits until the coordinator's
# task completes (it exits 0 after R rounds), checks that R rounds were
# committed and every node task completed, prints the coordinator's round
# lines, and removes the stack (services, network, secrets) unless --keep.
# On a real swarm: --print, copy the stack file and pki/ to a manager, and
# `docker stack deploy -c stack.yml fedlora` there (the image must be in a
# registry the workers can pull from, or loaded on every machine).
#
# With --regions G (coordinator tiers, docs/COORDINATOR.md "Tiers"): the
# coordinator is the root, services region-1..G are regional coordinators
# (fedlora-coordinator serve with [upstream] from FEDLORA_UPSTREAM_*; one
# certificate each from `certs.sh region`, serverAuth + clientAuth, as a
# secret) and services node-1..G run N/G replicas each, joined to their
# region (replica k of node-g is node-((g-1) N/G + k), FLEET_SLOT_BASE). The
# run then also checks that every region task completed (a region stops
# when the root finishes) and that the root's rounds had the G regions as
# participants.
#
# Options:
#   --nodes N        node replicas and identities (1..99, default 3)
#   --regions G      regional coordinators (0..9, default 0 = flat; N a multiple of G)
#   --rounds R       committed rounds before the federation ends (1..99, default 2)
#   --name STACK     stack name (default fedlora-stack)
#   --out DIR        pki/, stack.yml and logs (default ./build-stack/STACK)
#   --timeout SECS   give up after this long (default 180 + 60 x rounds)
#   --keep           leave the stack deployed
#   --print          only write pki/ and stack.yml, deploy nothing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/docker-lib.sh
source "$here/deploy/docker-lib.sh"

nodes=3 rounds=2 name=fedlora-stack out="" timeout=0 keep=0 print=0 regions=0
DK_PROG=stack-up
die() { dk_die "$@"; }
usage() { dk_usage "$0" "${1:-0}"; }
need() { dk_need "$@"; }
while [ $# -gt 0 ]; do
	case "$1" in
	--nodes) need "$@"; nodes=$2; shift 2 ;;
	--rounds) need "$@"; rounds=$2; shift 2 ;;
	--regions) need "$@"; regions=$2; shift 2 ;;
	--name) need "$@"; name=$2; shift 2 ;;
	--out) need "$@"; out=$2; shift 2 ;;
	--timeout) need "$@"; timeout=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	--print) print=1; shift ;;
	-h | --help) usage 0 ;;
	*) die "unknown option $1 (try --help)" ;;
	esac
done
[[ "$nodes" =~ ^[1-9][0-9]?$ ]] || die "--nodes must be 1..99"
[[ "$rounds" =~ ^[1-9][0-9]?$ ]] || die "--rounds must be 1..99"
[[ "$regions" =~ ^[0-9]$ ]] || die "--regions must be 0..9"
[ "$regions" -eq 0 ] || [ $((nodes % regions)) -eq 0 ] ||
	die "--nodes ($nodes) must be a multiple of --regions ($regions)"
# the root's participants: the nodes, or the regions
parts=$nodes
[ "$regions" -eq 0 ] || parts=$regions
per=$nodes
[ "$regions" -eq 0 ] || per=$((nodes / regions))
[[ "$name" =~ ^[a-z0-9][a-z0-9_-]{0,40}$ ]] || die "--name: lower-case letters, digits, - and _"
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
[ "$timeout" -gt 0 ] || timeout=$((180 + 60 * rounds))
out=${out:-$PWD/build-stack/$name}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- certificates and the stack file ---
rm -rf "$out/pki"
bash "$here/deploy/certs.sh" init "$out/pki" >/dev/null
bash "$here/deploy/certs.sh" coordinator "$out/pki" --dns coordinator >/dev/null
ids=()
for i in $(seq 1 "$nodes"); do ids+=("$(printf 'node-%02d' "$i")"); done
bash "$here/deploy/certs.sh" node "$out/pki" "${ids[@]}" >/dev/null
for g in $(seq 1 "$regions"); do
	bash "$here/deploy/certs.sh" region "$out/pki" "region-$g" --dns "region-$g" >/dev/null
done
# node_service NAME REPLICAS ENDPOINT_HOST SLOT_BASE FIRST LAST: a node
# service whose replicas are node-(SLOT_BASE+1).. with the secrets of
# node-FIRST..node-LAST
node_service() {
	cat <<EOF
  $1:
    image: ${DK_IMAGE}
    command: ["node"]
    environment:
      <<: *lora
      FLEET_SLOT: "{{.Task.Slot}}"
      FLEET_SLOT_BASE: "$4"
      FEDLORA_COORDINATOR_ENDPOINT: "tcp://$3:7777"
      FEDLORA_COORDINATOR_SERVER_NAME: "$3"
      FEDLORA_RECONNECT_MAX_MS: "2000"
      FEDLORA_MODEL_THREADS: "1"
      FEDLORA_DATA_EVAL_MAX_TOKENS: "8192"
      OMP_NUM_THREADS: "1"
    secrets:
      - ca.crt
EOF
	local k id
	for k in $(seq "$5" "$6"); do
		id=$(printf 'node-%02d' "$k")
		printf '      - %s.crt\n      - source: %s.key\n        <<: *key\n' "$id" "$id"
	done
	cat <<EOF
    networks: [fleet-net]
    deploy:
      replicas: $2
      restart_policy: {condition: on-failure, max_attempts: 5}
EOF
}
{
	cat <<EOF
# Generated by deploy/stack-up.sh: $nodes nodes, $regions regions, $rounds rounds.
# docker stack deploy -c stack.yml NAME   (from this folder: secrets are read from pki/)
version: "3.9"

x-lora: &lora
  FEDLORA_LORA_RANK: "16"
  FEDLORA_LORA_ALPHA: "32"
  FEDLORA_LORA_TARGETS: "attn_q,attn_v"
  FEDLORA_LORA_INIT_SEED: "1"

# keys: readable by the image's fedlora user (uid 10001) only
x-key: &key
  uid: "10001"
  gid: "10001"
  mode: 0400

networks:
  fleet-net:
    driver: overlay
    internal: true

services:
  coordinator:
    image: ${DK_IMAGE}
    command: ["coordinator"]
    environment:
      <<: *lora
      FEDLORA_SERVER_LISTEN: "tcp://0.0.0.0:7777"
      FEDLORA_SERVER_CERT: /run/secrets/coordinator.crt
      FEDLORA_SERVER_KEY: /run/secrets/coordinator.key
      FEDLORA_SERVER_CA: /run/secrets/ca.crt
      FEDLORA_SERVER_HEARTBEAT_MS: "1000"
      FEDLORA_STATE_DIR: /var/lib/fedlora/state
      FEDLORA_ROUNDS_MIN_NODES: "$parts"
      FEDLORA_ROUNDS_MIN_UPDATES: "$(((parts + 1) / 2))"
      FEDLORA_ROUNDS_MAX_ROUNDS: "$rounds"
      FEDLORA_ROUNDS_DEADLINE_MS: "120000"
      FEDLORA_ROUNDS_START_DELAY_MS: "1000"
      FEDLORA_TRAIN_LOCAL_STEPS: "10"
      FEDLORA_TRAIN_LR: "0.003"
      FEDLORA_TRAIN_BATCH_SIZE: "8"
      FEDLORA_TRAIN_CTX: "64"
      FEDLORA_TRAIN_UPLINK_FORMAT: "q4"
      FEDLORA_AGGREGATION_DOWNLINK_FORMAT: "q8"
    secrets:
      - ca.crt
      - coordinator.crt
      - source: coordinator.key
        <<: *key
    networks: [fleet-net]
    deploy:
      replicas: 1
      # nodes resolve "coordinator" to the task's own address (no virtual
      # IP: swarm's VIP needs IPVS, which not every kernel has; a
      # ZeroMQ node reconnects to the name anyway)
      endpoint_mode: dnsrr
      restart_policy: {condition: on-failure, max_attempts: 5}

EOF
	if [ "$regions" -eq 0 ]; then
		node_service node "$nodes" coordinator 0 1 "$nodes"
	fi
	for g in $(seq 1 "$regions"); do
		# a regional coordinator: a coordinator to its nodes, a node to the root
		cat <<EOF
  region-$g:
    image: ${DK_IMAGE}
    command: ["coordinator"]
    environment:
      <<: *lora
      FEDLORA_SERVER_LISTEN: "tcp://0.0.0.0:7777"
      FEDLORA_SERVER_CERT: /run/secrets/region-$g.crt
      FEDLORA_SERVER_KEY: /run/secrets/region-$g.key
      FEDLORA_SERVER_CA: /run/secrets/ca.crt
      FEDLORA_SERVER_HEARTBEAT_MS: "1000"
      FEDLORA_STATE_DIR: /var/lib/fedlora/state
      FEDLORA_ROUNDS_MIN_NODES: "$per"
      FEDLORA_ROUNDS_MIN_UPDATES: "$(((per + 1) / 2))"
      FEDLORA_ROUNDS_DEADLINE_MS: "110000"
      FEDLORA_UPSTREAM_ENDPOINT: "tcp://coordinator:7777"
      FEDLORA_UPSTREAM_SERVER_NAME: "coordinator"
      FEDLORA_UPSTREAM_CERT: /run/secrets/region-$g.crt
      FEDLORA_UPSTREAM_KEY: /run/secrets/region-$g.key
      FEDLORA_UPSTREAM_RECONNECT_MAX_MS: "2000"
    secrets:
      - ca.crt
      - region-$g.crt
      - source: region-$g.key
        <<: *key
    networks: [fleet-net]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      restart_policy: {condition: on-failure, max_attempts: 5}
EOF
		node_service "node-$g" "$per" "region-$g" $(((g - 1) * per)) $(((g - 1) * per + 1)) $((g * per))
	done
	cat <<EOF

secrets:
  ca.crt: {file: ./pki/ca.crt}
  coordinator.crt: {file: ./pki/coordinator.crt}
  coordinator.key: {file: ./pki/coordinator.key}
EOF
	for id in "${ids[@]}"; do
		printf '  %s.crt: {file: ./pki/nodes/%s.crt}\n  %s.key: {file: ./pki/nodes/%s.key}\n' \
			"$id" "$id" "$id" "$id"
	done
	for g in $(seq 1 "$regions"); do
		printf '  region-%s.crt: {file: ./pki/regions/region-%s.crt}\n' "$g" "$g"
		printf '  region-%s.key: {file: ./pki/regions/region-%s.key}\n' "$g" "$g"
	done
} >"$out/stack.yml"
echo "stack-up: wrote $out/stack.yml and $out/pki ($nodes nodes, $regions regions, $rounds rounds)"
[ "$print" -eq 0 ] || exit 0

# --- engine, image, swarm ---
dk_install >"$out/install.log" 2>&1 || die "cannot install Docker: $(tail -n 1 "$out/install.log")"
dk_engine_up || die "no Docker engine"
swarm_started=0
cleanup() {
	if [ "$keep" -eq 0 ]; then
		docker stack rm "$name" >/dev/null 2>&1 || true
		# the stack's network goes after its tasks: wait for both
		for _ in $(seq 1 60); do
			[ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$name")" ] &&
				[ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$name")" ] && break
			sleep 1
		done
		[ "$swarm_started" -eq 0 ] || docker swarm leave --force >/dev/null 2>&1 || true
	fi
	dk_engine_down
}
trap cleanup EXIT
dk_base_image || die "no base image"
dk_build "$out/build.log" || die "image build failed"
state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
if [ "$state" != active ]; then
	docker swarm init --advertise-addr 127.0.0.1 >"$out/swarm.log" 2>&1 ||
		die "docker swarm init failed: $(tail -n 1 "$out/swarm.log")"
	swarm_started=1
	echo "stack-up: this machine is now a single-node swarm manager (left again at the end)"
elif [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" != true ]; then
	die "this machine is a swarm worker: deploy from a manager"
fi

# --- deploy and follow ---
t0=$(dk_ms)
(cd "$out" && docker stack deploy -c stack.yml "$name") >"$out/deploy.log" 2>&1 ||
	die "docker stack deploy failed: $(tail -n 3 "$out/deploy.log")"
echo "stack-up: deployed stack $name; waiting for $rounds rounds (timeout ${timeout} s)"
states() { docker service ps "$1" --format '{{.DesiredState}} {{.CurrentState}}' 2>/dev/null; }
result=""
while [ $(($(dk_ms) - t0)) -lt $((timeout * 1000)) ]; do
	c=$(states "${name}_coordinator")
	if grep -q '^Shutdown Complete' <<<"$c"; then result=complete; break; fi
	if grep -q 'Failed\|Rejected' <<<"$c" && ! grep -q '^Running' <<<"$c"; then
		n=$(grep -c 'Failed\|Rejected' <<<"$c")
		[ "$n" -ge 5 ] && { result=failed; break; }
	fi
	sleep 2
done
docker service logs --raw "${name}_coordinator" >"$out/coordinator.log" 2>&1 || true
# the node services: "node" (flat) or node-1..G (regions)
node_svcs=("${name}_node")
if [ "$regions" -gt 0 ]; then
	node_svcs=()
	for g in $(seq 1 "$regions"); do
		node_svcs+=("${name}_node-$g")
		docker service logs --raw "${name}_region-$g" >"$out/region-$g.log" 2>&1 || true
	done
fi
for s in "${node_svcs[@]}"; do docker service logs --raw "$s"; done >"$out/nodes.log" 2>&1 || true
secs=$((($(dk_ms) - t0) / 1000))
[ -n "$result" ] || die "no result after ${timeout} s (logs in $out)"
[ "$result" = complete ] || die "the coordinator failed (logs in $out/coordinator.log)"
grep -E 'round [0-9]+ committed version' "$out/coordinator.log" | sed 's/^/  /' || true
committed=$(grep -cE 'round [0-9]+ committed version' "$out/coordinator.log" || true)
[ "$committed" -ge "$rounds" ] || die "$committed of $rounds rounds committed (logs in $out)"
# every node task (and region) completes by itself once told the
# federation finished
completed() { # completed SERVICE...: tasks that completed
	local s
	for s in "$@"; do
		docker service ps "$s" --filter desired-state=shutdown --format '{{.CurrentState}}'
	done | grep -c '^Complete' || true
}
done_nodes=0
for _ in $(seq 1 30); do
	done_nodes=$(completed "${node_svcs[@]}")
	[ "$done_nodes" -ge "$nodes" ] && break
	sleep 1
done
[ "$done_nodes" -ge "$nodes" ] || die "$done_nodes of $nodes node tasks completed (logs in $out/nodes.log)"
tiers=""
if [ "$regions" -gt 0 ]; then
	svcs=()
	for g in $(seq 1 "$regions"); do svcs+=("${name}_region-$g"); done
	done_regions=0
	for _ in $(seq 1 30); do
		done_regions=$(completed "${svcs[@]}")
		[ "$done_regions" -ge "$regions" ] && break
		sleep 1
	done
	[ "$done_regions" -ge "$regions" ] ||
		die "$done_regions of $regions region tasks completed (logs in $out/region-*.log)"
	# the root's participants were the regions, and each forwarded updates
	for g in $(seq 1 "$regions"); do
		grep -q "update from region-$g accepted" "$out/coordinator.log" ||
			die "the root accepted no update from region-$g (logs in $out)"
		grep -q "forwarding .* updates" "$out/region-$g.log" ||
			die "region-$g forwarded nothing (log: $out/region-$g.log)"
	done
	tiers=", $regions of $regions region tasks completed (each forwarded its nodes' updates)"
fi
echo "stack-up: $committed rounds committed, $nodes of $nodes node tasks completed$tiers, ${secs} s"
