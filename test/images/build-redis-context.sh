#!/bin/sh
# build-redis-context.sh DIR [REDIS_SERVER]
#
# Fills DIR with a Docker build context for test/images/redis/Dockerfile:
# DIR/Dockerfile and DIR/rootfs/ holding the host's redis-server (default
# /usr/bin/redis-server, symlinks resolved), every shared library that ldd
# reports for it and the dynamic loader, each at the path ldd reports, plus
# an empty world-writable /data. The result runs on an empty (scratch)
# base, so no image has to be pulled.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: build-redis-context.sh DIR [REDIS_SERVER]}
server=${2:-/usr/bin/redis-server}

if [ ! -x "$server" ]; then
	echo "build-redis-context.sh: $server not found; install it (apt-get install redis-server)" >&2
	exit 1
fi
if ! command -v ldd >/dev/null 2>&1; then
	echo "build-redis-context.sh: ldd not found (it comes with libc-bin)" >&2
	exit 1
fi

rootfs=$dir/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/bin" "$rootfs/data"
chmod 1777 "$rootfs/data"
cp "$here/redis/Dockerfile" "$dir/Dockerfile"
# cp -L: /usr/bin/redis-server is often a symlink (to redis-check-rdb);
# Redis picks its mode from argv[0], which stays redis-server.
cp -L "$server" "$rootfs/usr/bin/redis-server"

# ldd prints "name => /path (addr)" for libraries, "/path (addr)" for the
# loader and "name (addr)" for the vDSO, which has no file.
libs=$(ldd "$server" | awk '
	$2 == "=>" && $3 ~ /^\// { print $3; next }
	$1 ~ /^\// { print $1 }
')
if [ -z "$libs" ]; then
	echo "build-redis-context.sh: ldd reported no libraries for $server; is it static? (then it needs none, but check)" >&2
fi
for lib in $libs; do
	mkdir -p "$rootfs$(dirname "$lib")"
	cp -L "$lib" "$rootfs$lib"
done

# Sanity check: the copied server starts with only the copied libraries.
loader=$(printf '%s\n' $libs | grep '/ld-linux' | head -n 1 || true)
if [ -n "$loader" ]; then
	libpath=$(printf '%s\n' $libs | grep -v '/ld-linux' | xargs -r -n1 dirname | sort -u | sed "s|^|$rootfs|" | paste -sd: -)
	if ! "$rootfs$loader" --library-path "$libpath" "$rootfs/usr/bin/redis-server" --version >/dev/null; then
		echo "build-redis-context.sh: the copied redis-server does not run with the copied libraries" >&2
		exit 1
	fi
fi
echo "redis context: $dir ($(du -sh "$rootfs" | cut -f1), $(printf '%s\n' $libs | wc -l) libraries)"
