#!/usr/bin/env bash
# netsim.sh — a fleet on one Linux machine without Docker: one network
# namespace per node and one for the coordinator, joined by veth pairs to a
# bridge inside a namespace of its own, with per-node link limits and link
# flaps. Everything it creates is torn down on exit, Ctrl-C or failure.
#
# Usage (as root):
#   netsim.sh --nodes N --coord-cmd CMD --node-cmd CMD [options]
#
#   --nodes N            number of node namespaces (1..1000; a bridge has at most 1024 ports)
#   --coord-cmd CMD      run in the coordinator namespace (bash -c); its exit
#                        ends the simulation and is netsim's exit status.
#                        {ip} expands to the coordinator's address.
#   --node-cmd CMD       run in each node namespace; {i} = 1..N, {i2} = 01..NN
#                        (zero-padded to the width of N, at least 2), {ip} =
#                        the node's address, {coord} = coordinator address.
#   --rate R             per-node link rate both ways, tc units (e.g. 10mbit)
#   --delay D            one-way delay per node link (needs netem), e.g. 40ms
#   --loss P             packet loss per node link (needs netem), e.g. 1%
#   --flap I:AT:DUR      take node I's link down AT seconds after start for
#                        DUR seconds (repeatable)
#   Uneven fleets:
#   --node-rate I:R      node I's link rate instead of --rate (repeatable)
#   --slowdown I:F       node I is a slow device: {slowdown} in --node-cmd
#                        expands to F for it and to 1 for the others; pass it
#                        as --train.slowdown={slowdown} (the node sleeps
#                        (F - 1) x each measured training step: the ratio
#                        holds whatever the machine's load, which a cgroup
#                        cpu.max quota on a shared machine does not give)
#   --avail I:ON:OFF[:AT]  on/off availability: from AT seconds after start
#                        (default 0), node I's link is up ON seconds, down
#                        OFF seconds, repeating until the end (repeatable)
#   --timeout S          stop everything after S seconds (default 900)
#   --logdir DIR         coordinator.log and node-NN.log (default ./netsim-logs)
#   --prefix P           namespace name prefix (default fls<PID>)
#   --selftest           no commands: check connectivity and the rate limit
#                        with curl against a python3 http.server
#
# Addresses: 10.213.0.1 for the coordinator, 10.213.X.Y for nodes, all inside
# namespaces this script creates; nothing reaches the host's network.
# netem (delay/loss) is used only when the kernel has it; otherwise netsim
# says so and emulates rate limits (tbf) and flaps only.
set -euo pipefail

prog=netsim
die() { echo "$prog: $*" >&2; exit 1; }
usage_err() { echo "$prog: $* (try --help)" >&2; exit 2; }

nodes=0 coord_cmd="" node_cmd="" rate="" delay="" loss="" timeout=900
logdir=./netsim-logs prefix="fls$$" selftest=0
flaps=()
node_rates=() slowdowns=() avails=()
while [ $# -gt 0 ]; do
	case "$1" in
	--nodes) nodes=${2:?}; shift 2 ;;
	--coord-cmd) coord_cmd=${2:?}; shift 2 ;;
	--node-cmd) node_cmd=${2:?}; shift 2 ;;
	--rate) rate=${2:?}; shift 2 ;;
	--delay) delay=${2:?}; shift 2 ;;
	--loss) loss=${2:?}; shift 2 ;;
	--flap) flaps+=("${2:?}"); shift 2 ;;
	--node-rate) node_rates+=("${2:?}"); shift 2 ;;
	--slowdown) slowdowns+=("${2:?}"); shift 2 ;;
	--avail) avails+=("${2:?}"); shift 2 ;;
	--timeout) timeout=${2:?}; shift 2 ;;
	--logdir) logdir=${2:?}; shift 2 ;;
	--prefix) prefix=${2:?}; shift 2 ;;
	--selftest) selftest=1; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) usage_err "unknown option '$1'" ;;
	esac
done
[[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 1000 ] ||
	usage_err "--nodes must be 1..1000"
[[ "$prefix" =~ ^[a-z0-9]{1,8}$ ]] || usage_err "--prefix must be 1-8 of [a-z0-9]"
if [ "$selftest" -eq 0 ]; then
	[ -n "$coord_cmd" ] || usage_err "--coord-cmd is required"
	[ -n "$node_cmd" ] || usage_err "--node-cmd is required"
fi
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
command -v ip >/dev/null || die "needs iproute2 (ip)"
command -v tc >/dev/null || die "needs tc (iproute2)"

br="$prefix-br"
cns="$prefix-c"
coord_ip=10.213.0.1
width=${#nodes}; [ "$width" -lt 2 ] && width=2
nsname() { echo "$prefix-n$1"; }
node_ip() { echo "10.213.$(($1 / 200 + 1)).$(($1 % 200 + 10))"; }
pids=()
# of_node LIST I DEFAULT: the value after "I:" in LIST ("I:V" items), else DEFAULT
of_node() {
	local v=$3 it
	for it in $1; do [ "${it%%:*}" = "$2" ] && v=${it#*:}; done
	printf '%s' "$v"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	sleep 0.5
	local ns
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-" || true); do
		# Anything still running inside our namespaces goes, then the namespace
		# (which takes its veth ends with it).
		ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
		ip netns del "$ns" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if ip netns list 2>/dev/null | grep -qE "^$prefix-"; then
		echo "$prog: WARNING: namespaces left behind: $(ip netns list | grep -E "^$prefix-" | tr '\n' ' ')" >&2
	else
		echo "$prog: torn down (no namespaces left)"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# netem available? Try it once in a scratch namespace of ours.
netem=0
ip netns add "$prefix-probe"
if ip netns exec "$prefix-probe" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
	netem=1
fi
ip netns del "$prefix-probe"
if [ -n "$delay$loss" ] && [ "$netem" -eq 0 ]; then
	echo "$prog: NOTE: this kernel has no netem: --delay/--loss are NOT emulated (rate limits and flaps are)"
fi

# shape DEV NS: rate (tbf) and, with netem, delay/loss on egress of DEV.
shape() {
	local ns=$1 dev=$2 parent="root"
	if [ "$netem" -eq 1 ] && [ -n "$delay$loss" ]; then
		ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: netem \
			${delay:+delay $delay} ${loss:+loss $loss}
		parent="parent 1:1"
	fi
	if [ -n "$rate" ]; then
		# burst: at least one full frame plus headroom; latency bounds the queue.
		ip netns exec "$ns" tc qdisc add dev "$dev" $parent handle 10: tbf rate "$rate" \
			burst 32kbit latency 400ms
	fi
}

echo "$prog: building $nodes node namespaces (prefix $prefix)${rate:+, rate $rate}"
ip netns add "$br"
ip -n "$br" link add br0 type bridge
ip -n "$br" link set br0 up
ip -n "$br" link set lo up

ip netns add "$cns"
ip link add "${prefix}c0" type veth peer name vc
ip link set vc netns "$br"
ip link set "${prefix}c0" netns "$cns"
ip -n "$cns" link set "${prefix}c0" name eth0
ip -n "$cns" addr add "$coord_ip/16" dev eth0
ip -n "$cns" link set eth0 up
ip -n "$cns" link set lo up
ip -n "$br" link set vc master br0 up

for i in $(seq 1 "$nodes"); do
	ns=$(nsname "$i")
	ip netns add "$ns"
	ip link add "${prefix}n$i" type veth peer name "vn$i"
	ip link set "vn$i" netns "$br"
	ip link set "${prefix}n$i" netns "$ns"
	ip -n "$ns" link set "${prefix}n$i" name eth0
	ip -n "$ns" addr add "$(node_ip "$i")/16" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set lo up
	ip -n "$br" link set "vn$i" master br0 up
	nrate=$(of_node "${node_rates[*]:-}" "$i" "$rate")
	rate=$nrate shape "$ns" eth0   # node -> coordinator (upload)
	rate=$nrate shape "$br" "vn$i" # coordinator -> node (download)
done
mkdir -p "$logdir"

if [ "$selftest" -eq 1 ]; then
	command -v python3 >/dev/null || die "selftest needs python3"
	command -v curl >/dev/null || die "selftest needs curl"
	tmp=$(mktemp -d)
	head -c 1000000 /dev/urandom >"$tmp/blob"
	ip netns exec "$cns" python3 -m http.server 8080 --bind "$coord_ip" --directory "$tmp" \
		>"$logdir/selftest-http.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 50); do
		ip netns exec "$(nsname 1)" curl -s -o /dev/null "http://$coord_ip:8080/" && break
		sleep 0.1
	done
	fails=0
	for i in $(seq 1 "$nodes"); do
		t=$(ip netns exec "$(nsname "$i")" curl -s -o /dev/null -w '%{time_total}' \
			--max-time 60 "http://$coord_ip:8080/blob") || { fails=$((fails + 1)); t=-; }
		echo "node $i ($(node_ip "$i")): 1 MB in ${t}s"
	done
	rm -rf "$tmp"
	[ "$fails" -eq 0 ] || die "$fails node(s) could not reach the coordinator"
	echo "$prog: selftest ok"
	exit 0
fi

expand() { # CMD I
	local c=$1 i=${2:-0}
	local i2
	i2=$(printf "%0${width}d" "$i")
	c=${c//\{i2\}/$i2}
	c=${c//\{i\}/$i}
	c=${c//\{coord\}/$coord_ip}
	c=${c//\{slowdown\}/$(of_node "${slowdowns[*]:-}" "$i" 1)}
	if [ "$i" -eq 0 ]; then c=${c//\{ip\}/$coord_ip}; else c=${c//\{ip\}/$(node_ip "$i")}; fi
	printf '%s' "$c"
}

ip netns exec "$cns" bash -c "$(expand "$coord_cmd" 0)" >"$logdir/coordinator.log" 2>&1 &
coord_pid=$!
pids+=("$coord_pid")
for i in $(seq 1 "$nodes"); do
	ip netns exec "$(nsname "$i")" bash -c "$(expand "$node_cmd" "$i")" \
		>"$logdir/node-$(printf "%0${width}d" "$i").log" 2>&1 &
	pids+=($!)
done

start=$(date +%s)
for f in "${flaps[@]}"; do
	IFS=: read -r fi fat fdur <<<"$f"
	[[ "$fi" =~ ^[0-9]+$ && "$fi" -ge 1 && "$fi" -le "$nodes" ]] || usage_err "--flap $f: bad node"
	(
		sleep "$fat"
		echo "$prog: flap: node $fi link down for ${fdur}s" >&2
		ip -n "$br" link set "vn$fi" down
		sleep "$fdur"
		ip -n "$br" link set "vn$fi" up
		echo "$prog: flap: node $fi link up" >&2
	) &
	pids+=($!)
done

for a in "${avails[@]}"; do
	IFS=: read -r ai aon aoff aat <<<"$a"
	[[ "$ai" =~ ^[0-9]+$ && "$ai" -ge 1 && "$ai" -le "$nodes" ]] || usage_err "--avail $a: bad node"
	[[ "$aon" =~ ^[0-9]+$ && "$aoff" =~ ^[0-9]+$ && "${aat:-0}" =~ ^[0-9]+$ ]] ||
		usage_err "--avail $a: ON, OFF and AT are whole seconds"
	(
		sleep "${aat:-0}"
		while :; do
			sleep "$aon"
			echo "$prog: avail: node $ai offline for ${aoff}s" >&2
			ip -n "$br" link set "vn$ai" down
			sleep "$aoff"
			ip -n "$br" link set "vn$ai" up
			echo "$prog: avail: node $ai online" >&2
		done
	) &
	pids+=($!)
done

echo "$prog: running; logs in $logdir"
rc=0
while kill -0 "$coord_pid" 2>/dev/null; do
	if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
		echo "$prog: timeout after ${timeout}s" >&2
		rc=124
		break
	fi
	sleep 1
done
if [ "$rc" -eq 0 ]; then
	wait "$coord_pid" || rc=$?
fi
echo "$prog: coordinator finished with status $rc after $(($(date +%s) - start))s"
exit "$rc"
