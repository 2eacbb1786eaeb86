#!/usr/bin/env bash
# fedlora container entrypoint. Roles:
#   prepare       one shot: CA + certificates, base model, one data shard per
#                 node, all into the shared volume $FLEET (default /fleet)
#   coordinator   fedlora-coordinator serve, configured by FEDLORA_* variables
#   node          with FLEET_SLOT set (a swarm stack, deploy/stack-up.sh:
#                 FLEET_SLOT={{.Task.Slot}}): is node FLEET_SLOT, with its
#                 certificate and key from Docker secrets in FLEET_SECRETS
#                 (default /run/secrets), and derives the base model and
#                 its own data shard itself (same parameters as prepare, so
#                 the same bytes); no shared volume.
#                 Otherwise claims the first free node index in $FLEET/claims (an
#                 atomic mkdir, so `docker compose up --scale node=8` gives
#                 every replica its own certificate and shard), then runs
#                 fedlora-node run; a replica restarted by its restart
#                 policy keeps the identity it claimed (by its hostname).
#                 Its state (metrics.jsonl, the verified global version)
#                 lives in $FLEET/nodes/<id>. Exits 0 when the coordinator
#                 says the federation is finished.
#   shape         (re)applies the node's egress shaping (FLEET_NODE_RATE,
#                 FLEET_NODE_DELAY, FLEET_NODE_LOSS); the node role does it
#                 at start, deploy/compose-up.sh again after a link flap
#   health ROLE   the container health check of that role (exit 0 = healthy)
# Anything else is executed as a command.
set -euo pipefail
fleet=${FLEET:-/fleet}
nodes=${FLEET_NODES:-8}
prefix=/opt/fedlora
certs_sh=$prefix/share/fedlora/scripts/certs.sh
log() { printf 'entrypoint: %s\n' "$*" >&2; }

# Egress shaping of this container with tc: tbf for FLEET_NODE_RATE (e.g.
# 10mbit), netem for FLEET_NODE_DELAY (e.g. 40ms) and FLEET_NODE_LOSS (e.g.
# 1%) when the kernel has netem -- otherwise it says that these are not
# emulated and shapes the rate only. Needs NET_ADMIN in the container (tc
# carries the file capability; without NET_ADMIN it cannot run).
shape() {
	local rate=${FLEET_NODE_RATE:-} delay=${FLEET_NODE_DELAY:-} loss=${FLEET_NODE_LOSS:-} dev
	[ -n "$rate$delay$loss" ] || return 0
	[ -z "$rate" ] || [[ $rate =~ ^[0-9]+(\.[0-9]+)?[kmg]?bit$ ]] ||
		{ log "FLEET_NODE_RATE '$rate' is not a tc rate like 10mbit"; return 2; }
	[ -z "$delay" ] || [[ $delay =~ ^[0-9]+(\.[0-9]+)?(us|ms|s)$ ]] ||
		{ log "FLEET_NODE_DELAY '$delay' is not a delay like 40ms"; return 2; }
	[ -z "$loss" ] || [[ $loss =~ ^[0-9]+(\.[0-9]+)?%$ ]] ||
		{ log "FLEET_NODE_LOSS '$loss' is not a percentage like 1%"; return 2; }
	tc -V >/dev/null 2>&1 || { log "cannot run tc: the container needs NET_ADMIN (cap_add) for FLEET_NODE_*"; return 2; }
	for dev in /sys/class/net/*; do
		dev=${dev##*/}
		[ "$dev" = lo ] && continue
		tc qdisc del dev "$dev" root 2>/dev/null || true
		local parent=(root)
		if [ -n "$delay$loss" ]; then
			if tc qdisc add dev "$dev" root handle 1: netem ${delay:+delay "$delay"} ${loss:+loss "$loss"} 2>/dev/null; then
				parent=(parent 1:1)
				log "$dev: netem${delay:+ delay $delay}${loss:+ loss $loss}"
			else
				log "$dev: this kernel has no netem: FLEET_NODE_DELAY/FLEET_NODE_LOSS are NOT emulated"
			fi
		fi
		if [ -n "$rate" ]; then
			tc qdisc add dev "$dev" "${parent[@]}" handle 10: tbf rate "$rate" burst 32kbit latency 400ms ||
				{ log "$dev: tc tbf rate $rate failed"; return 2; }
			log "$dev: egress rate $rate (tbf)"
		fi
	done
}

# Health checks (docker-compose.yml). coordinator: its metrics endpoint
# answers /healthz. node: PID 1 (fedlora-node) holds an established TCP
# connection to the coordinator's port -- false while a link is down or the
# coordinator restarts, which is what the status should show.
health() {
	case "${1:-}" in
	coordinator)
		local hp=${FEDLORA_METRICS_LISTEN:-0.0.0.0:9464}
		exec 3<>"/dev/tcp/127.0.0.1/${hp##*:}" &&
			printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && grep -q '^ok' <&3
		;;
	node)
		local ep=${FEDLORA_COORDINATOR_ENDPOINT:-tcp://coordinator:7777} port hex
		port=${ep##*:}
		[[ $port =~ ^[0-9]+$ ]] || return 1
		hex=$(printf '%04X' "$port")
		# /proc/net/tcp{,6}: rem_address is field 3, st (01 = ESTABLISHED) field 4
		awk -v p=":$hex" '$3 ~ p"$" && $4 == "01" {ok = 1} END {exit !ok}' /proc/net/tcp /proc/net/tcp6
		;;
	prepare)
		[ -s "$fleet/model/base.sha256" ]
		;;
	*)
		log "health: unknown role '${1:-}' (coordinator|node|prepare)"
		return 2
		;;
	esac
}

# The base model every party derives the same way (same parameters and
# seed, so the same bytes and fingerprint) and node INDEX's data shard.
make_model() {
	[ -f "$fleet/model/base.gguf" ] && return 0
	mkdir -p "$fleet/model"
	fedlora-node init-model --out "$fleet/model/base.gguf" --dim "${FLEET_DIM:-128}" \
		--layers "${FLEET_LAYERS:-4}" --heads 4 --ffn "${FLEET_FFN:-384}" --ctx 128 --seed 7
}
make_shard() {
	local sites=(harbor foundry mill plant depot) # the sites gen-data knows
	local id
	id=$(printf 'node-%02d' "$1")
	[ -f "$fleet/data/$id/train.txt" ] && return 0
	fedlora-node gen-data --site "${sites[$((($1 - 1) % ${#sites[@]}))]}" --seed "$1" \
		--lines 3000 --eval-lines 300 --out "$fleet/data/$id" >/dev/null
}

role=${1:-}
case "$role" in
prepare)
	[[ "$nodes" =~ ^[1-9][0-9]{0,2}$ ]] || { log "FLEET_NODES must be 1..999"; exit 2; }
	if ! mkdir -p "$fleet/claims" "$fleet/data" "$fleet/model" "$fleet/nodes" 2>/dev/null; then
		log "cannot write $fleet as uid $(id -u): the volume must belong to that user (the image's /fleet does)"
		exit 1
	fi
	if [ ! -f "$fleet/certs/ca.crt" ]; then
		bash "$certs_sh" init "$fleet/certs"
		bash "$certs_sh" coordinator "$fleet/certs" --dns coordinator --dns localhost
	fi
	for i in $(seq 1 "$nodes"); do
		id=$(printf 'node-%02d' "$i")
		[ -f "$fleet/certs/nodes/$id.crt" ] || bash "$certs_sh" node "$fleet/certs" "$id" >/dev/null
	done
	make_model
	for i in $(seq 1 "$nodes"); do
		make_shard "$i"
	done
	# Claims are per deployment: a fresh `up` starts from an empty set.
	rm -rf "$fleet/claims" && mkdir -p "$fleet/claims"
	fedlora-node fingerprint --model "$fleet/model/base.gguf" >"$fleet/model/base.sha256"
	log "prepared $nodes nodes in $fleet"
	;;
coordinator)
	shift
	export FEDLORA_SERVER_CERT=${FEDLORA_SERVER_CERT:-$fleet/certs/coordinator.crt}
	export FEDLORA_SERVER_KEY=${FEDLORA_SERVER_KEY:-$fleet/certs/coordinator.key}
	export FEDLORA_SERVER_CA=${FEDLORA_SERVER_CA:-$fleet/certs/ca.crt}
	export FEDLORA_FEDERATION_BASE_GGUF=${FEDLORA_FEDERATION_BASE_GGUF:-$fleet/model/base.gguf}
	# in a swarm stack nothing was prepared: derive the model here
	[ -f "$FEDLORA_FEDERATION_BASE_GGUF" ] || make_model
	exec fedlora-coordinator serve --config "$prefix/etc/fedlora/coordinator.conf" "$@"
	;;
node)
	shift
	if [ -n "${FLEET_SLOT:-}" ]; then
		[[ "$FLEET_SLOT" =~ ^[1-9][0-9]{0,2}$ ]] || { log "FLEET_SLOT must be 1..999"; exit 2; }
		# a region's node service (stack-up.sh --regions): its replicas
		# are node-(FLEET_SLOT_BASE + slot)
		[[ "${FLEET_SLOT_BASE:-0}" =~ ^[0-9]{1,3}$ ]] || { log "FLEET_SLOT_BASE must be 0..999"; exit 2; }
		FLEET_SLOT=$((FLEET_SLOT + ${FLEET_SLOT_BASE:-0}))
		secrets=${FLEET_SECRETS:-/run/secrets}
		id=$(printf 'node-%02d' "$FLEET_SLOT")
		[ -r "$secrets/$id.crt" ] && [ -r "$secrets/$id.key" ] && [ -r "$secrets/ca.crt" ] ||
			{ log "no certificate for $id in $secrets (the stack gives node-01..NN: replicas <= nodes)"; exit 1; }
		log "this replica is $id (swarm slot $FLEET_SLOT)"
		make_model
		make_shard "$FLEET_SLOT"
		shape
		export FEDLORA_NODE_STATE_DIR=${FEDLORA_NODE_STATE_DIR:-/var/lib/fedlora/state/$id}
		export FEDLORA_NODE_SEED=${FEDLORA_NODE_SEED:-$FLEET_SLOT}
		export FEDLORA_TLS_CERT=$secrets/$id.crt
		export FEDLORA_TLS_KEY=$secrets/$id.key
		export FEDLORA_TLS_CA=$secrets/ca.crt
		export FEDLORA_MODEL_PATH=${FEDLORA_MODEL_PATH:-$fleet/model/base.gguf}
		export FEDLORA_DATA_TRAIN=$fleet/data/$id/train.txt
		export FEDLORA_DATA_EVAL=$fleet/data/$id/eval.txt
		exec fedlora-node run --config "$prefix/etc/fedlora/node.conf" "$@"
	fi
	idx=""
	me=$(hostname)
	# a restarted container keeps the identity it claimed
	for d in "$fleet"/claims/*/; do
		[ -f "${d}by" ] && [ "$(cat "${d}by")" = "$me" ] || continue
		idx=$(basename "$d")
		break
	done
	if [ -z "$idx" ]; then
		for i in $(seq 1 "$nodes"); do
			if mkdir "$fleet/claims/$i" 2>/dev/null; then
				idx=$i
				printf '%s\n' "$me" >"$fleet/claims/$i/by"
				break
			fi
		done
	fi
	[ -n "$idx" ] || { log "all $nodes node identities are taken (raise FLEET_NODES)"; exit 1; }
	id=$(printf 'node-%02d' "$idx")
	log "this replica is $id"
	shape
	export FEDLORA_NODE_STATE_DIR=${FEDLORA_NODE_STATE_DIR:-$fleet/nodes/$id}
	export FEDLORA_NODE_SEED=${FEDLORA_NODE_SEED:-$idx}
	export FEDLORA_TLS_CERT=$fleet/certs/nodes/$id.crt
	export FEDLORA_TLS_KEY=$fleet/certs/nodes/$id.key
	export FEDLORA_TLS_CA=$fleet/certs/ca.crt
	export FEDLORA_MODEL_PATH=${FEDLORA_MODEL_PATH:-$fleet/model/base.gguf}
	export FEDLORA_DATA_TRAIN=$fleet/data/$id/train.txt
	export FEDLORA_DATA_EVAL=$fleet/data/$id/eval.txt
	exec fedlora-node run --config "$prefix/etc/fedlora/node.conf" "$@"
	;;
shape)
	shape
	;;
health)
	health "${2:-}"
	;;
"")
	exec fedlora-node --help
	;;
*)
	exec "$@"
	;;
esac
