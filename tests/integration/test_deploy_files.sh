#!/usr/bin/env bash
# The container files: the compose file validates with Debian's
# docker-compose, and a lint-level check of the Dockerfile that runs without
# a Docker engine: every COPY source exists, the runtime stage installs no
# build packages, the image runs as a non-root user, no secrets are copied.
set -euo pipefail
src=${FEDLORA_SRC:?}
cd "$src"
fail() { echo "FAIL: $*" >&2; exit 1; }

bash -n deploy/docker-entrypoint.sh || fail "docker-entrypoint.sh has a syntax error"

if command -v docker-compose >/dev/null 2>&1; then
	docker-compose -f deploy/docker-compose.yml config -q || fail "docker-compose.yml does not validate"
	# the scalable node service and the one-shot prepare service are there
	docker-compose -f deploy/docker-compose.yml config --services | sort | tr '\n' ' ' |
		grep -qx 'coordinator node prepare ' || fail "unexpected service list"
	echo "ok: docker-compose config"
else
	echo "SKIP: docker-compose not installed (deploy/install-deps.sh installs it)"
	exit 77
fi

df=deploy/Dockerfile
# every COPY source (not --from) exists in the build context (the repo root)
while read -r line; do
	set -- $line
	shift # COPY
	[[ "$1" == --from=* ]] && continue
	n=$#
	for ((k = 1; k < n; k++)); do
		[ -e "${!k}" ] || fail "Dockerfile COPY source '${!k}' does not exist"
	done
done < <(grep -E '^COPY ' "$df")
echo "ok: every COPY source exists"

# the runtime stage: from its FROM line to the end
runtime=$(awk '/^FROM .* AS runtime/{on=1} on' "$df")
[ -n "$runtime" ] || fail "no runtime stage"
if grep -Eo '[a-z0-9.+-]+-dev\b|build-essential|cmake|protobuf-c-compiler' <<<"$runtime"; then
	fail "runtime stage installs build packages"
fi
grep -qE '^USER [a-z0-9]+' <<<"$runtime" || fail "runtime stage does not switch to a non-root user"
grep -qE '^USER root' <<<"$runtime" && fail "runtime stage runs as root"
# (deploy/certs.sh, the script that makes certificates at run time, is fine)
if grep -Ei '^(COPY|ADD) .*(\.key|\.pem|\.crt|certs/|certs( |$)|secret)' "$df"; then
	fail "the Dockerfile copies key material"
fi
# the runtime libraries the binaries link against are installed
for lib in libzmq5 libprotobuf-c1 libssl3 libopenblas0 libinih1 libcjson1 libmicrohttpd12 libgomp1; do
	grep -q "$lib" <<<"$runtime" || fail "runtime stage lacks $lib"
done
echo "ok: Dockerfile lint"

# Every shared library the built binaries need comes from a package the
# runtime stage installs (or from the base image's libc/libgcc/libstdc++).
for bin in "${FEDLORA_NODE_BIN:-}" "${FEDLORA_COORD_BIN:-}"; do
	[ -x "$bin" ] || continue
	while read -r so; do
		pkg=$(dpkg -S "$so" 2>/dev/null | head -1 | cut -d: -f1) || true
		[ -n "$pkg" ] || continue
		case "$pkg" in libc6 | libgcc-s1 | libstdc++6 | libasan* | libubsan* | liblsan* | libtsan*) continue ;; esac
		# libopenblas0-pthread is what libopenblas0 pulls in
		[ "$pkg" = libopenblas0-pthread ] && pkg=libopenblas0
		# the transitive dependencies of the installed libraries come with them
		case "$pkg" in libsodium23 | libpgm-5.3-0 | libnorm1 | libgssapi-krb5-2 | libkrb5* | libk5crypto3 | libcom-err2 | libkeyutils1 | libbsd0 | libmd0 | libgnutls30 | libgfortran5 | libquadmath0 | libp11-kit0 | libidn2-0 | libunistring2 | libtasn1-6 | libnettle8 | libhogweed6 | libgmp10 | libffi8) continue ;; esac
		grep -qw "$pkg" <<<"$runtime" || fail "$(basename "$bin") needs $so from $pkg, not installed in the runtime stage"
	done < <(ldd "$bin" | awk '/=>/ {print $3}' | xargs -r readlink -f)
done
echo "ok: runtime packages cover the binaries' libraries"
