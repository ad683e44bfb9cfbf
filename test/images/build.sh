#!/bin/sh
# build.sh [--force] [node] [redis]
#
# Builds the images the integration tests (test/cluster) run, locally, with
# nothing pulled:
#
#   $NODE_IMAGE  (default channelsd:test)       the channelsd node: ./Dockerfile,
#                FROM scratch, with a static binary compiled here on the host.
#   $REDIS_IMAGE (default channelsd-redis:test) Redis: test/images/redis/Dockerfile,
#                FROM scratch, with the host's redis-server and its libraries.
#
# With no names it handles both. An image is built when it is missing or
# stale (its label channelsd.sha256 differs from the sha256 of the binary
# it would hold), or always with --force (or FORCE=1). The node binary is
# compiled on every run (the Go build cache makes that quick) to decide
# whether the image is stale.
#
# Set REDIS_IMAGE to any other image (e.g. redis:7) to use it instead of
# building one: build.sh then only pulls it if it is missing, and needs no
# redis-server on the host. The tests pass it no command, so any image whose
# default command serves Redis on 6379 without protected mode does.
set -eu

NODE_IMAGE=${NODE_IMAGE:-channelsd:test}
DEFAULT_REDIS_IMAGE=channelsd-redis:test
REDIS_IMAGE=${REDIS_IMAGE:-$DEFAULT_REDIS_IMAGE}
REDIS_SERVER=${REDIS_SERVER:-/usr/bin/redis-server}
CA_CERTS=${CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
GO=${GO:-go}
FORCE=${FORCE:-}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { echo "build.sh: $*" >&2; exit 1; }

want_node= want_redis=
for arg in "$@"; do
	case $arg in
	-f|--force) FORCE=1 ;;
	node) want_node=1 ;;
	redis) want_redis=1 ;;
	-h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $arg (usage: build.sh [--force] [node] [redis])" ;;
	esac
done
if [ -z "$want_node$want_redis" ]; then want_node=1 want_redis=1; fi

command -v docker >/dev/null 2>&1 || die "the docker command is not installed"
if ! err=$(docker info 2>&1 >/dev/null); then
	die "cannot reach the Docker engine (docker info failed); start it or set DOCKER_HOST:
$err"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# label IMAGE prints the image's channelsd.sha256 label, or nothing when
# the image is missing.
label() {
	docker image inspect --format '{{ index .Config.Labels "channelsd.sha256" }}' "$1" 2>/dev/null || true
}

# build IMAGE CONTEXT SUM: docker build unless the image is there with SUM.
build() {
	if [ -z "$FORCE" ] && [ "$(label "$1")" = "$3" ]; then
		echo "$1: up to date"
		return
	fi
	echo "$1: building"
	old=$(docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true)
	# --label: the classic builder (Docker 20.10) and BuildKit both take it.
	# Its output (and the legacy builder's deprecation notice) only shows
	# on failure.
	if ! docker build --label "channelsd.sha256=$3" -t "$1" "$2" >"$tmp/build.log" 2>&1; then
		cat "$tmp/build.log" >&2
		die "docker build of $1 failed"
	fi
	echo "$1: built ($(docker image inspect --format '{{.Size}}' "$1") bytes)"
	# Drop the image this one replaced, unless something still uses it.
	if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{.Id}}' "$1")" ]; then
		docker rmi "$old" >/dev/null 2>&1 || true
	fi
}

if [ -n "$want_node" ]; then
	[ -r "$CA_CERTS" ] || die "$CA_CERTS not found (apt-get install ca-certificates)"
	ctx=$tmp/node
	mkdir -p "$ctx"
	(cd "$root" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags='-s -w' -o "$ctx/channelsd" ./cmd/channelsd) ||
		die "go build ./cmd/channelsd failed"
	cp "$CA_CERTS" "$ctx/ca-certificates.crt"
	cp "$root/Dockerfile" "$ctx/Dockerfile"
	build "$NODE_IMAGE" "$ctx" "$(cat "$ctx/channelsd" "$ctx/ca-certificates.crt" "$ctx/Dockerfile" | sha256sum | cut -d' ' -f1)"
fi

if [ -n "$want_redis" ]; then
	if [ "$REDIS_IMAGE" != "$DEFAULT_REDIS_IMAGE" ]; then
		if docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1; then
			echo "$REDIS_IMAGE: present (REDIS_IMAGE is set: not built here)"
		else
			echo "$REDIS_IMAGE: pulling (REDIS_IMAGE is set: not built here)"
			docker pull "$REDIS_IMAGE" >/dev/null || die "docker pull $REDIS_IMAGE failed"
		fi
	else
		[ -x "$REDIS_SERVER" ] || die "$REDIS_SERVER not found: the Redis image is built from the host's redis-server (apt-get install redis-server), or set REDIS_IMAGE=redis:7 to use a registry's image"
		ctx=$tmp/redis
		"$here/build-redis-context.sh" "$ctx" "$REDIS_SERVER" >/dev/null
		build "$REDIS_IMAGE" "$ctx" "$( (cd "$ctx" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1)"
	fi
fi
