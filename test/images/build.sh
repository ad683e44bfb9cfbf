#!/bin/sh
# build.sh [--force] [node] [redis] [haproxy] [backend]
#
# Builds the images the integration tests (test/harness, test/cluster) run,
# locally, with nothing pulled:
#
#   $NODE_IMAGE    (default channelsd:test)         the channelsd node:
#                  ./Dockerfile, FROM scratch, with a static binary
#                  compiled here on the host.
#   $REDIS_IMAGE   (default channelsd-redis:test)   Redis:
#                  test/images/redis/Dockerfile, FROM scratch, with the
#                  host's redis-server, redis-cli (which creates the
#                  Redis Cluster of harness.Options.RedisCluster; Debian's
#                  redis-tools, a dependency of redis-server) and their
#                  libraries.
#   $HAPROXY_IMAGE (default channelsd-haproxy:test) HAProxy, the load
#                  balancer of harness.StartLoadBalancer:
#                  test/images/haproxy/Dockerfile, FROM scratch, with the
#                  host's haproxy (Debian package) and its libraries.
#   $BACKEND_IMAGE (default channelsd-backend:test) the application
#                  backend of the cluster's proxy test
#                  (harness.StartBackend): test/images/backend/Dockerfile,
#                  FROM scratch, with test/images/backend compiled here
#                  as a static binary.
#
# With no names it handles all four. An image is built when it is missing
# or stale (its label channelsd.sha256 differs from the sha256 of what it
# would hold), or always with --force (or FORCE=1). The node binary is
# compiled on every run (the Go build cache makes that quick) to decide
# whether the image is stale. Both Redis and HAProxy contexts are made by
# test/images/build-context.sh (one binary, its libraries, the loader).
#
# Set REDIS_IMAGE to any other image (e.g. redis:7) to use it instead of
# building one: build.sh then only pulls it if it is missing, and needs no
# redis-server on the host. The tests pass it no command, so any image whose
# default command serves Redis on 6379 without protected mode does; the
# Redis Cluster tests pass it redis-server's options as its command (which
# the official image's entrypoint hands to redis-server) and run redis-cli
# in it, from the PATH.
# Likewise HAPROXY_IMAGE (e.g. haproxy:2.8): the tests copy their
# configuration to /usr/local/etc/haproxy/haproxy.cfg and run the command
# `-f /usr/local/etc/haproxy/haproxy.cfg`, which the official image's
# entrypoint and the local image both run as `haproxy -W -db -f ...`.
set -eu

NODE_IMAGE=${NODE_IMAGE:-channelsd:test}
DEFAULT_REDIS_IMAGE=channelsd-redis:test
REDIS_IMAGE=${REDIS_IMAGE:-$DEFAULT_REDIS_IMAGE}
# host_bin NAME DEBIAN_PATH: the host's binary, at the Debian path, else on
# the PATH (where prereqs.sh and test/redistest look too).
host_bin() {
	if [ -x "$2" ]; then echo "$2"; else command -v "$1" 2>/dev/null || echo "$2"; fi
}
REDIS_SERVER=${REDIS_SERVER:-$(host_bin redis-server /usr/bin/redis-server)}
REDIS_CLI=${REDIS_CLI:-$(host_bin redis-cli /usr/bin/redis-cli)}
DEFAULT_HAPROXY_IMAGE=channelsd-haproxy:test
HAPROXY_IMAGE=${HAPROXY_IMAGE:-$DEFAULT_HAPROXY_IMAGE}
HAPROXY_BIN=${HAPROXY_BIN:-$(host_bin haproxy /usr/sbin/haproxy)}
BACKEND_IMAGE=${BACKEND_IMAGE:-channelsd-backend:test}
CA_CERTS=${CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
GO=${GO:-go}
FORCE=${FORCE:-}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { echo "build.sh: $*" >&2; exit 1; }

want_node= want_redis= want_haproxy= want_backend=
for arg in "$@"; do
	case $arg in
	-f|--force) FORCE=1 ;;
	node) want_node=1 ;;
	redis) want_redis=1 ;;
	haproxy) want_haproxy=1 ;;
	backend) want_backend=1 ;;
	-h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $arg (usage: build.sh [--force] [node] [redis] [haproxy] [backend])" ;;
	esac
done
if [ -z "$want_node$want_redis$want_haproxy$want_backend" ]; then want_node=1 want_redis=1 want_haproxy=1 want_backend=1; fi

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

# pull IMAGE VAR: for an image named by the user rather than built here.
pull() {
	if docker image inspect "$1" >/dev/null 2>&1; then
		echo "$1: present ($2 is set: not built here)"
	else
		echo "$1: pulling ($2 is set: not built here)"
		docker pull "$1" >/dev/null || die "docker pull $1 failed"
	fi
}

# context_sum DIR: the sha256 of every file of a build context.
context_sum() {
	(cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1
}

if [ -n "$want_redis" ]; then
	if [ "$REDIS_IMAGE" != "$DEFAULT_REDIS_IMAGE" ]; then
		pull "$REDIS_IMAGE" REDIS_IMAGE
	else
		[ -x "$REDIS_SERVER" ] || die "$REDIS_SERVER not found: the Redis image is built from the host's redis-server (apt-get install redis-server), or set REDIS_IMAGE=redis:7 to use a registry's image"
		[ -x "$REDIS_CLI" ] || die "$REDIS_CLI not found: the Redis image holds the host's redis-cli too (apt-get install redis-tools)"
		ctx=$tmp/redis
		"$here/build-context.sh" --writable-dir /data --extra "$REDIS_CLI" /usr/bin/redis-cli "$ctx" "$here/redis/Dockerfile" "$REDIS_SERVER" /usr/bin/redis-server >/dev/null
		build "$REDIS_IMAGE" "$ctx" "$(context_sum "$ctx")"
	fi
fi

# REDIS_CLUSTER_IMAGE (test/harness's Redis Cluster; default REDIS_IMAGE)
# names an image of its own, e.g. redis:7 where the host's Redis is
# older: pulled like REDIS_IMAGE.
if [ -n "$want_redis" ] && [ -n "${REDIS_CLUSTER_IMAGE:-}" ] && [ "$REDIS_CLUSTER_IMAGE" != "$REDIS_IMAGE" ]; then
	pull "$REDIS_CLUSTER_IMAGE" REDIS_CLUSTER_IMAGE
fi

if [ -n "$want_haproxy" ]; then
	if [ "$HAPROXY_IMAGE" != "$DEFAULT_HAPROXY_IMAGE" ]; then
		pull "$HAPROXY_IMAGE" HAPROXY_IMAGE
	else
		[ -x "$HAPROXY_BIN" ] || die "$HAPROXY_BIN not found: the HAProxy image is built from the host's haproxy (apt-get install haproxy), or set HAPROXY_IMAGE=haproxy:2.8 to use a registry's image"
		ctx=$tmp/haproxy
		"$here/build-context.sh" --check -v --dir /usr/local/etc/haproxy "$ctx" "$here/haproxy/Dockerfile" "$HAPROXY_BIN" /usr/local/sbin/haproxy >/dev/null
		build "$HAPROXY_IMAGE" "$ctx" "$(context_sum "$ctx")"
	fi
fi

if [ -n "$want_backend" ]; then
	ctx=$tmp/backend
	mkdir -p "$ctx"
	(cd "$root" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags='-s -w' -o "$ctx/backend" ./test/images/backend) ||
		die "go build ./test/images/backend failed"
	cp "$here/backend/Dockerfile" "$ctx/Dockerfile"
	build "$BACKEND_IMAGE" "$ctx" "$(context_sum "$ctx")"
fi
