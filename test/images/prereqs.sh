#!/bin/sh
# prereqs.sh [-q] NEED...
#
# Checks, in seconds, what a make target needs before it starts anything
# long, and installs what is missing when it can. NEEDs:
#
#   go             the go command, at least the version go.mod names
#   cgo            gcc and libc6-dev: -race needs cgo
#   docker         a Docker engine that answers `docker version`
#   redis          redis-server on the host: the Redis tests run it on
#                  loopback (REDIS_SERVER, else /usr/bin/redis-server, else
#                  the PATH, as test/redistest looks)
#   redis-image    redis-server for the local Redis test image, unless
#                  REDIS_IMAGE names another image (build.sh then pulls it);
#                  the image's redis-cli comes with it (Debian's
#                  redis-server depends on redis-tools)
#   haproxy-image  haproxy for the local load-balancer test image, unless
#                  HAPROXY_IMAGE names another image (HAPROXY_BIN, else
#                  /usr/sbin/haproxy, else the PATH)
#   chromium       chromium (CHROMIUM, else the names test/browser looks
#                  for on the PATH) and fonts-liberation, so that the
#                  browser tests' screenshots have text
#   certs          ca-certificates (CA_CERTS, else the Debian bundle),
#                  copied into the node image
#
# Missing Debian packages are installed (apt-get update once, then
# apt-get install -y) when apt-get exists and this runs as root or with
# passwordless sudo, unless PREREQS_INSTALL=no. Otherwise it prints one line
# with the exact command and exits 1. Go and Docker are not installed here
# (no Debian package of this release is new enough, and a Docker engine is
# a service to start): a missing one is one line each, and then nothing is
# installed, so that the run stops in seconds. Every problem found is
# reported, not only the first.
#
#   -q  print nothing when everything is present
#
# PREREQS_ROOT (for its own test) is prepended to every fixed path it looks
# at (/usr/bin/redis-server, /usr/sbin/haproxy, ...).
set -u

me=prereqs
GO=${GO:-go}
ROOT=${PREREQS_ROOT:-}
here=$(cd "$(dirname "$0")" && pwd)
gomod=$here/../../go.mod
DEFAULT_REDIS_IMAGE=channelsd-redis:test
DEFAULT_HAPROXY_IMAGE=channelsd-haproxy:test

quiet=
if [ "${1:-}" = -q ]; then quiet=1; shift; fi
[ $# -gt 0 ] || { echo "usage: prereqs.sh [-q] NEED... (go cgo docker redis redis-image haproxy-image chromium certs bench-tools)" >&2; exit 2; }
for need in "$@"; do
	case $need in
	go|cgo|docker|redis|redis-image|haproxy-image|chromium|certs|bench-tools) ;;
	*) echo "$me: unknown need $need" >&2; exit 2 ;;
	esac
done

# version_ge A B: A >= B, both as in go.mod (1.26.8; 1.26rc1 counts as 1.26.0).
version_ge() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		n = split(a, x, "."); m = split(b, y, ".")
		for (i = 1; i <= 3; i++) {
			xi = i <= n ? x[i] + 0 : 0; yi = i <= m ? y[i] + 0 : 0
			if (xi > yi) exit 0
			if (xi < yi) exit 1
		}
		exit 0
	}'
}

# The results of one check: packages to install, problems no package
# solves (one line each), and what was found, for the summary.
pkgs= fatal= found=
addpkg() {
	case " $pkgs " in *" $1 "*) ;; *) pkgs="${pkgs:+$pkgs }$1" ;; esac
}
problem() {
	fatal="$fatal$me: $*
"
}
saw() {
	case " $found " in *" $1 "*) ;; *) found="${found:+$found, }$1" ;; esac
}

# exe PATH: PATH is an executable file (or a command name on the PATH).
exe() {
	case $1 in
	*/*) [ -f "$1" ] && [ -x "$1" ] ;;
	*) command -v "$1" >/dev/null 2>&1 ;;
	esac
}

check_go() {
	if ! command -v "$GO" >/dev/null 2>&1; then
		problem "the go command ($GO) is not on the PATH: install Go $want_go or newer (make test runs it)"
		return
	fi
	# GOTOOLCHAIN=local: an older go would otherwise try to download the
	# newer toolchain go.mod asks for.
	have=$(GOTOOLCHAIN=local "$GO" env GOVERSION 2>/dev/null)
	if ! version_ge "${have#go}" "$want_go"; then
		problem "go.mod needs Go $want_go or newer, and $GO is ${have:-unknown}: install a newer Go first on the PATH"
		return
	fi
	saw "$have"
}

check_cgo() {
	cc=${CC:-gcc}
	cc=${cc%% *}
	if ! exe "$cc"; then
		if [ -n "${CC:-}" ]; then
			problem "CC=$CC is not a command (the race detector needs a C compiler)"
		else
			addpkg gcc
		fi
	fi
	[ -f "$ROOT/usr/include/stdio.h" ] || addpkg libc6-dev
	saw "$cc"
}

check_docker() {
	if ! command -v docker >/dev/null 2>&1; then
		problem "the docker command is not installed: the integration tests need a running Docker engine (install and start one, e.g. Debian's docker.io; make test cannot)"
		return
	fi
	t=
	if command -v timeout >/dev/null 2>&1; then t="timeout 30"; fi
	# docker version, not docker info: an older client's info --format
	# hides the reason behind a template error when the engine is away.
	if ! v=$($t docker version --format '{{.Server.Version}}' 2>&1) || [ -z "$v" ]; then
		v=$(printf '%s\n' "$v" | grep -v '^[[:space:]]*$' | head -n 1)
		problem "cannot reach the Docker engine (docker version: ${v:-no answer}): start it, set DOCKER_HOST, or give this user its socket (the docker group)"
		return
	fi
	saw "docker engine $v"
}

# check_redis: the binary test/redistest (and, through REDIS_SERVER, build.sh) runs.
check_redis() {
	if [ -n "${REDIS_SERVER:-}" ]; then
		exe "$REDIS_SERVER" || problem "REDIS_SERVER=$REDIS_SERVER is not an executable"
	elif ! exe "$ROOT/usr/bin/redis-server" && ! exe redis-server; then
		addpkg redis-server
	fi
	saw redis-server
}

# The tools make bench-peer's script uses besides Go and Redis.
check_bench_tools() {
	exe jq || addpkg jq
	exe curl || addpkg curl
	exe ss || addpkg iproute2
	saw jq
}

check_haproxy() {
	if [ -n "${HAPROXY_BIN:-}" ]; then
		exe "$HAPROXY_BIN" || problem "HAPROXY_BIN=$HAPROXY_BIN is not an executable"
	elif ! exe "$ROOT/usr/sbin/haproxy" && ! exe haproxy; then
		addpkg haproxy
	fi
	saw haproxy
}

check_chromium() {
	if [ -n "${CHROMIUM:-}" ]; then
		exe "$CHROMIUM" || problem "CHROMIUM=$CHROMIUM is not an executable"
	else
		ok=
		for b in chromium chromium-browser google-chrome google-chrome-stable; do
			if exe "$b"; then ok=1; break; fi
		done
		[ -n "$ok" ] || addpkg chromium
	fi
	[ -d "$ROOT/usr/share/fonts/truetype/liberation" ] || addpkg fonts-liberation
	saw chromium
	saw fonts-liberation
}

check_certs() {
	if [ -n "${CA_CERTS:-}" ]; then
		[ -r "$CA_CERTS" ] || problem "CA_CERTS=$CA_CERTS is not a readable file"
	elif [ ! -r "$ROOT/etc/ssl/certs/ca-certificates.crt" ]; then
		addpkg ca-certificates
	fi
	saw ca-certificates
}

check() {
	pkgs= fatal= found=
	for need in "$@"; do
		case $need in
		go) check_go ;;
		cgo) check_cgo ;;
		docker) check_docker ;;
		redis) check_redis ;;
		redis-image)
			# Another image is pulled by build.sh, not built from the host's.
			if [ "${REDIS_IMAGE:-$DEFAULT_REDIS_IMAGE}" = "$DEFAULT_REDIS_IMAGE" ]; then check_redis; fi ;;
		haproxy-image)
			if [ "${HAPROXY_IMAGE:-$DEFAULT_HAPROXY_IMAGE}" = "$DEFAULT_HAPROXY_IMAGE" ]; then check_haproxy; fi ;;
		chromium) check_chromium ;;
		certs) check_certs ;;
		bench-tools) check_bench_tools ;;
		esac
	done
}

want_go=$(awk '$1 == "go" { print $2; exit }' "$gomod" 2>/dev/null)
want_go=${want_go:-1.0}

check "$@"
if [ -z "$pkgs$fatal" ]; then
	[ -n "$quiet" ] || echo "$me: all present: $found"
	exit 0
fi

# How packages can be installed here, if at all.
sudo= can=
if command -v apt-get >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ]; then
		can=1
	elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
		can=1 sudo="sudo -n"
	fi
fi
[ "${PREREQS_INSTALL:-yes}" != no ] || can=

if [ -n "$fatal" ] || [ -z "$can" ]; then
	printf '%s' "$fatal" >&2
	if [ -n "$pkgs" ]; then
		if ! command -v apt-get >/dev/null 2>&1; then
			echo "$me: missing $pkgs (Debian package names): install them with the system's package manager" >&2
		else
			s= then=
			[ "$(id -u)" = 0 ] || s="sudo "
			# Nothing is installed while a problem above stops the run anyway.
			[ -z "$can" ] || then=" (or let make install them once the above is fixed)"
			echo "$me: missing Debian packages; install them with: ${s}apt-get update && ${s}apt-get install -y $pkgs$then" >&2
		fi
	fi
	exit 1
fi

echo "$me: installing $pkgs (apt-get as $(if [ -n "$sudo" ]; then echo "sudo"; else echo root; fi))"
# apt-get's and dpkg's output is long: it is shown only when they fail.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! $sudo apt-get update -qq >"$log" 2>&1; then
	cat "$log" >&2
	echo "$me: apt-get update failed; then run: ${sudo:+sudo }apt-get install -y $pkgs" >&2
	exit 1
fi
# shellcheck disable=SC2086 # $pkgs is a list of words
if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >"$log" 2>&1; then
	cat "$log" >&2
	echo "$me: apt-get install -y $pkgs failed" >&2
	exit 1
fi

installed=$pkgs
check "$@"
if [ -n "$pkgs$fatal" ]; then
	printf '%s' "$fatal" >&2
	echo "$me: installed $installed, but still missing: $pkgs" >&2
	exit 1
fi
[ -n "$quiet" ] || echo "$me: all present: $found"
