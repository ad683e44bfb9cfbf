#!/bin/sh
# build-context.sh [--check ARG] [--dir PATH]... [--writable-dir PATH]... DIR DOCKERFILE BINARY PATH
#
# Fills DIR with a Docker build context for an image made of one host
# binary: DIR/Dockerfile (a copy of DOCKERFILE) and DIR/rootfs/ holding
# BINARY (symlinks resolved) at PATH, every shared library that ldd reports
# for it and the dynamic loader, each at the path ldd reports. The result
# runs on an empty (scratch) base, so no image has to be pulled.
#
#   --dir PATH           also create the empty directory PATH (mode 755)
#   --writable-dir PATH  also create the empty directory PATH, mode 1777
#   --check ARG          run the copied binary with ARG (default --version),
#                        with only the copied libraries, to check that it starts
#
# build.sh uses it for
#   Redis:   --writable-dir /data DIR test/images/redis/Dockerfile /usr/bin/redis-server /usr/bin/redis-server
#   HAProxy: --check -v --dir /usr/local/etc/haproxy DIR test/images/haproxy/Dockerfile /usr/sbin/haproxy /usr/local/sbin/haproxy
set -eu

me=build-context.sh
usage="usage: $me [--check ARG] [--dir PATH]... [--writable-dir PATH]... DIR DOCKERFILE BINARY PATH"
check=--version dirs= wdirs=
while [ $# -gt 0 ]; do
	case $1 in
	--check) check=${2:?$usage}; shift 2 ;;
	--dir) dirs="$dirs ${2:?$usage}"; shift 2 ;;
	--writable-dir) wdirs="$wdirs ${2:?$usage}"; shift 2 ;;
	--) shift; break ;;
	-*) echo "$me: unknown option $1 ($usage)" >&2; exit 2 ;;
	*) break ;;
	esac
done
[ $# -eq 4 ] || { echo "$usage" >&2; exit 2; }
dir=$1 dockerfile=$2 bin=$3 dest=$4
name=$(basename "$dest")

if [ ! -x "$bin" ]; then
	echo "$me: $bin not found; install it (e.g. apt-get install $name)" >&2
	exit 1
fi
if ! command -v ldd >/dev/null 2>&1; then
	echo "$me: ldd not found (it comes with libc-bin)" >&2
	exit 1
fi

rootfs=$dir/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs$(dirname "$dest")"
for d in $dirs; do
	mkdir -p "$rootfs$d"
	chmod 755 "$rootfs$d"
done
for d in $wdirs; do
	mkdir -p "$rootfs$d"
	chmod 1777 "$rootfs$d"
done
cp "$dockerfile" "$dir/Dockerfile"
# cp -L: the binary is often a symlink (/usr/bin/redis-server points to
# redis-check-rdb); Redis picks its mode from argv[0], which stays
# redis-server as long as PATH ends in redis-server.
cp -L "$bin" "$rootfs$dest"

# ldd prints "name => /path (addr)" for libraries, "/path (addr)" for the
# loader and "name (addr)" for the vDSO, which has no file.
libs=$(ldd "$bin" | awk '
	$2 == "=>" && $3 ~ /^\// { print $3; next }
	$1 ~ /^\// { print $1 }
')
if [ -z "$libs" ]; then
	echo "$me: ldd reported no libraries for $bin; is it static? (then it needs none, but check)" >&2
fi
for lib in $libs; do
	mkdir -p "$rootfs$(dirname "$lib")"
	cp -L "$lib" "$rootfs$lib"
done

# Sanity check: the copied binary starts with only the copied libraries.
loader=$(printf '%s\n' $libs | grep '/ld-linux' | head -n 1 || true)
if [ -n "$loader" ]; then
	libpath=$(printf '%s\n' $libs | grep -v '/ld-linux' | xargs -r -n1 dirname | sort -u | sed "s|^|$rootfs|" | paste -sd: -)
	if ! "$rootfs$loader" --library-path "$libpath" "$rootfs$dest" "$check" >/dev/null; then
		echo "$me: the copied $name does not run with the copied libraries" >&2
		exit 1
	fi
fi
echo "$name context: $dir ($(du -sh "$rootfs" | cut -f1), $(printf '%s\n' $libs | wc -l) libraries)"
