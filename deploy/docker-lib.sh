# shellcheck shell=bash
# deploy/docker-lib.sh — sourced (bash) by deploy/compose-up.sh and
# tests/integration/docker_compose.sh: a Docker engine, the Debian base image
# and the fedlora image, on a machine that may have none of them and no
# image registry. Every function returns non-zero with a message on stderr
# naming what failed; none exits.
#
#   dk_install     installs docker.io / docker-compose / debootstrap when their
#                  commands are missing (apt-get; root or sudo)
#   dk_engine_up   uses a running engine, or starts dockerd in the background
#                  (log: $DK_DOCKERD_LOG); DK_STARTED=1 when it started it
#   dk_engine_down stops dockerd if dk_engine_up started it
#   dk_base_image  debian:12-slim: present -> reused; else pulled; else built
#                  from Debian's archive (debootstrap minbase + docker import)
#   dk_build       builds fedlora:latest from deploy/Dockerfile (layer cache)
#   dk_compose ... docker compose (v2) or docker-compose (v1), whichever works
#   dk_ms          milliseconds since the epoch (timings)

DK_ROOT=${DK_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
DK_BASE_IMAGE=${DK_BASE_IMAGE:-debian:12-slim}
DK_IMAGE=${DK_IMAGE:-fedlora:latest}
DK_DOCKERD_LOG=${DK_DOCKERD_LOG:-${TMPDIR:-/tmp}/fedlora-dockerd.log}
DK_STARTED=0
DK_DOCKERD_PID=

dk_say() { printf '%s\n' "$*"; }
# the scripts' command-line helpers: dk_die MSG (prefixed with $DK_PROG, exits 1),
# dk_usage SCRIPT [STATUS] (the script's header comment as help, exits),
# dk_need OPTION ARGS... (dies unless OPTION has a value)
dk_die() {
	printf '%s: %s\n' "${DK_PROG:-docker}" "$*" >&2
	exit 1
}
dk_usage() {
	sed -n '2,/^set -euo/p' "$1" | sed '$d' | sed 's/^# \{0,1\}//'
	exit "${2:-0}"
}
dk_need() { [ $# -ge 2 ] || dk_die "$1 needs a value (try --help)"; }
dk_err() { printf 'docker: %s\n' "$*" >&2; }
dk_ms() { date +%s%3N; }

dk_sudo() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		dk_err "not root and no sudo: cannot run $*"
		return 1
	fi
}

# dk_install [debootstrap]: the engine and a compose; debootstrap only when
# asked (it is needed only to build the base image).
dk_install() {
	local pkgs=()
	command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
	if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
		pkgs+=(docker-compose)
	fi
	[ "${1:-}" != debootstrap ] || command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
	[ ${#pkgs[@]} -gt 0 ] || return 0
	dk_say "installing ${pkgs[*]} (apt-get)"
	command -v apt-get >/dev/null 2>&1 || {
		dk_err "no apt-get: install ${pkgs[*]} yourself"
		return 1
	}
	DEBIAN_FRONTEND=noninteractive dk_sudo apt-get update -q >/dev/null &&
		DEBIAN_FRONTEND=noninteractive dk_sudo apt-get install -y -q --no-install-recommends \
			"${pkgs[@]}" >/dev/null || {
		dk_err "apt-get install ${pkgs[*]} failed"
		return 1
	}
}

dk_engine_up() {
	docker info >/dev/null 2>&1 && return 0
	command -v dockerd >/dev/null 2>&1 || {
		dk_err "no Docker engine is running and dockerd is not installed"
		return 1
	}
	if [ "$(id -u)" -ne 0 ]; then
		dk_err "no Docker engine is running and only root can start dockerd"
		return 1
	fi
	dk_say "starting dockerd (log: $DK_DOCKERD_LOG)"
	dockerd >"$DK_DOCKERD_LOG" 2>&1 &
	DK_DOCKERD_PID=$!
	DK_STARTED=1
	for _ in $(seq 1 120); do
		docker info >/dev/null 2>&1 && return 0
		if ! kill -0 "$DK_DOCKERD_PID" 2>/dev/null; then
			DK_STARTED=0
			dk_err "dockerd exited at start: $(grep -E 'level=(fatal|error)' "$DK_DOCKERD_LOG" | tail -1)"
			return 1
		fi
		sleep 0.5
	done
	dk_err "dockerd did not answer within 60 s (log: $DK_DOCKERD_LOG)"
	dk_engine_down
	return 1
}

dk_engine_down() {
	[ "$DK_STARTED" = 1 ] || return 0
	kill -TERM "$DK_DOCKERD_PID" 2>/dev/null || true
	for _ in $(seq 1 60); do
		kill -0 "$DK_DOCKERD_PID" 2>/dev/null || break
		sleep 0.5
	done
	wait "$DK_DOCKERD_PID" 2>/dev/null || true
	DK_STARTED=0
	dk_say "stopped the dockerd this script started"
}

# The Debian mirror the host's apt uses for bookworm (deb822 .sources or
# one-line .list), else deb.debian.org. FLEET_DEBIAN_MIRROR overrides.
dk_mirror() {
	if [ -n "${FLEET_DEBIAN_MIRROR:-}" ]; then
		echo "$FLEET_DEBIAN_MIRROR"
		return
	fi
	local m
	m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
		/^[ \t]*$/ { if (u != "" && s ~ /(^| )bookworm( |$)/) { print u; exit } u = ""; s = ""; next }
		/^URIs:/ { u = $2 } /^Suites:/ { $1 = ""; s = $0 " " }
		END { if (u != "" && s ~ /(^| )bookworm( |$)/) print u }' | head -1)
	[ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" { sub(/\[[^]]*\] */, ""); if ($3 == "bookworm") { print $2; exit } }')
	echo "${m:-http://deb.debian.org/debian}"
}

dk_base_image() {
	if docker image inspect "$DK_BASE_IMAGE" >/dev/null 2>&1; then
		dk_say "base image $DK_BASE_IMAGE: present, reused"
		return 0
	fi
	if timeout 60 docker pull -q "$DK_BASE_IMAGE" >/dev/null 2>&1; then
		dk_say "base image $DK_BASE_IMAGE: pulled"
		return 0
	fi
	dk_install debootstrap || return 1
	local mirror dir t0
	mirror=$(dk_mirror)
	t0=$(dk_ms)
	dk_say "base image $DK_BASE_IMAGE: no registry; building it with debootstrap --variant=minbase bookworm from $mirror"
	dir=$(mktemp -d "${TMPDIR:-/tmp}/fedlora-rootfs.XXXXXX")
	if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1; then
		dk_err "debootstrap failed: $(tail -n 3 "$dir.log" | tr '\n' ' ') (log: $dir.log)"
		rm -rf "$dir"
		return 1
	fi
	# as slim as Debian's own -slim images: no docs, man pages, locales, apt caches
	cat >"$dir/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
EOF
	cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
	printf 'APT::Install-Recommends "false";\nAcquire::Languages "none";\n' \
		>"$dir/etc/apt/apt.conf.d/90fedlora-slim"
	find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null
	rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/var/cache/apt/* \
		"$dir"/var/lib/apt/lists/* "$dir"/var/log/*.log "$dir"/var/log/apt/*
	find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
	if ! tar -C "$dir" -c . | docker import \
		-c 'CMD ["bash"]' -c 'LABEL org.fedlora.base="debootstrap minbase bookworm"' \
		- "$DK_BASE_IMAGE" >/dev/null; then
		dk_err "docker import of the debootstrap tree failed"
		rm -rf "$dir" "$dir.log"
		return 1
	fi
	rm -rf "$dir" "$dir.log"
	dk_say "base image $DK_BASE_IMAGE built in $((($(dk_ms) - t0) / 1000)) s ($(dk_image_mb "$DK_BASE_IMAGE") MB)"
}

dk_image_mb() {
	local b
	b=$(docker image inspect -f '{{.Size}}' "$1" 2>/dev/null) || return 1
	echo $(((b + 524288) / 1048576))
}

# dk_build LOG: the fedlora image; the engine's layer cache makes a rebuild
# with unchanged sources take seconds.
dk_build() {
	local log=$1 t0
	t0=$(dk_ms)
	if ! docker build -t "$DK_IMAGE" -f "$DK_ROOT/deploy/Dockerfile" "$DK_ROOT" >"$log" 2>&1; then
		tail -n 30 "$log" >&2
		dk_err "docker build failed (log: $log)"
		return 1
	fi
	# the build stage stays behind as an untagged image: it is the layer
	# cache that makes the next build fast
	dk_say "image $DK_IMAGE built in $((($(dk_ms) - t0) / 1000)) s ($(dk_image_mb "$DK_IMAGE") MB)"
}

dk_compose() {
	if docker compose version >/dev/null 2>&1; then
		docker compose "$@"
	else
		docker-compose "$@"
	fi
}
