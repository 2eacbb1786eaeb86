#!/usr/bin/env bash
# fedlora container entrypoint. Roles:
#   prepare       one shot: CA + certificates, base model, one data shard per
#                 node, all into the shared volume $FLEET (default /fleet)
#   coordinator   fedlora-coordinator serve, configured by FEDLORA_* variables
#   node          claims the first free node index in $FLEET/claims (an
#                 atomic mkdir, so `docker compose up --scale node=8` gives
#                 every replica its own certificate and shard), then runs
#                 fedlora-node run
# Anything else is executed as a command.
set -euo pipefail
fleet=${FLEET:-/fleet}
nodes=${FLEET_NODES:-8}
prefix=/opt/fedlora
certs_sh=$prefix/share/fedlora/scripts/certs.sh
log() { printf 'entrypoint: %s\n' "$*" >&2; }

role=${1:-}
case "$role" in
prepare)
	[[ "$nodes" =~ ^[1-9][0-9]{0,2}$ ]] || { log "FLEET_NODES must be 1..999"; exit 2; }
	mkdir -p "$fleet/claims" "$fleet/data" "$fleet/model"
	if [ ! -f "$fleet/certs/ca.crt" ]; then
		bash "$certs_sh" init "$fleet/certs"
		bash "$certs_sh" coordinator "$fleet/certs" --dns coordinator --dns localhost
	fi
	for i in $(seq 1 "$nodes"); do
		id=$(printf 'node-%02d' "$i")
		[ -f "$fleet/certs/nodes/$id.crt" ] || bash "$certs_sh" node "$fleet/certs" "$id" >/dev/null
	done
	if [ ! -f "$fleet/model/base.gguf" ]; then
		fedlora-node init-model --out "$fleet/model/base.gguf" --dim "${FLEET_DIM:-128}" \
			--layers "${FLEET_LAYERS:-4}" --heads 4 --ffn "${FLEET_FFN:-384}" --ctx 128 --seed 7
	fi
	sites=(harbor foundry mill plant depot quarry)
	for i in $(seq 1 "$nodes"); do
		id=$(printf 'node-%02d' "$i")
		[ -f "$fleet/data/$id/train.txt" ] && continue
		fedlora-node gen-data --site "${sites[$(((i - 1) % ${#sites[@]}))]}" --seed "$i" \
			--lines 3000 --eval-lines 300 --out "$fleet/data/$id" >/dev/null
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
	exec fedlora-coordinator serve --config "$prefix/etc/fedlora/coordinator.conf" "$@"
	;;
node)
	shift
	idx=""
	for i in $(seq 1 "$nodes"); do
		if mkdir "$fleet/claims/$i" 2>/dev/null; then
			idx=$i
			hostname >"$fleet/claims/$i/by" 2>/dev/null || true
			break
		fi
	done
	[ -n "$idx" ] || { log "all $nodes node identities are taken (raise FLEET_NODES)"; exit 1; }
	id=$(printf 'node-%02d' "$idx")
	log "this replica is $id"
	export FEDLORA_NODE_STATE_DIR=${FEDLORA_NODE_STATE_DIR:-/var/lib/fedlora/$id}
	export FEDLORA_NODE_SEED=${FEDLORA_NODE_SEED:-$idx}
	export FEDLORA_TLS_CERT=$fleet/certs/nodes/$id.crt
	export FEDLORA_TLS_KEY=$fleet/certs/nodes/$id.key
	export FEDLORA_TLS_CA=$fleet/certs/ca.crt
	export FEDLORA_MODEL_PATH=${FEDLORA_MODEL_PATH:-$fleet/model/base.gguf}
	export FEDLORA_DATA_TRAIN=$fleet/data/$id/train.txt
	export FEDLORA_DATA_EVAL=$fleet/data/$id/eval.txt
	exec fedlora-node run --config "$prefix/etc/fedlora/node.conf" "$@"
	;;
"")
	exec fedlora-node --help
	;;
*)
	exec "$@"
	;;
esac
