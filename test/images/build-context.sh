#!/bin/sh
# build-context.sh [--check ARG] [--dir PATH]... [--writable-dir PATH]... [--extra BINARY PATH]... DIR DOCKERFILE BINARY PATH
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
#   --extra BINARY PATH  also copy BINARY to PATH with its libraries (checked
#                        with --version)
#
# build.sh uses it for
#   Redis:   --writable-dir /data --extra /usr/bin/redis-cli /usr/bin/redis-cli DIR test/images/redis/Dockerfile /usr/bin/redis-server /usr/bin/redis-server
#   HAProxy: --check -v --dir /usr/local/etc/haproxy DIR test/images/haproxy/Dockerfile /usr/sbin/haproxy /usr/local/sbin/haproxy
set -eu

me=build-context.sh
usage="usage: $me [--check ARG] [--dir PATH]... [--writable-dir PATH]... [--extra BINARY PATH]... DIR DOCKERFILE BINARY PATH"
check=--version dirs= wdirs= extras=
while [ $# -gt 0 ]; do
	case $1 in
	--check) check=${2:?$usage}; shift 2 ;;
	--dir) dirs="$dirs ${2:?$usage}"; shift 2 ;;
	--writable-dir) wdirs="$wdirs ${2:?$usage}"; shift 2 ;;
	--extra) extras="$extras ${2:?$usage} ${3:?$usage}"; shift 3 ;;
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

# copy BINARY PATH ARG: BINARY at PATH with every library ldd reports for
# it, then a check that the copy runs ARG with only the copied libraries.
# Sets libs to those libraries.
copy() {
	b=$1 d=$2 arg=$3
	if [ ! -x "$b" ]; then
		echo "$me: $b not found; install it (e.g. apt-get install the package holding $(basename "$d"))" >&2
		exit 1
	fi
	mkdir -p "$rootfs$(dirname "$d")"
	# cp -L: the binary is often a symlink (/usr/bin/redis-server points
	# to redis-check-rdb); Redis picks its mode from argv[0], which stays
	# redis-server as long as PATH ends in redis-server.
	cp -L "$b" "$rootfs$d"

	# ldd prints "name => /path (addr)" for libraries, "/path (addr)" for
	# the loader and "name (addr)" for the vDSO, which has no file.
	libs=$(ldd "$b" | awk '
		$2 == "=>" && $3 ~ /^\// { print $3; next }
		$1 ~ /^\// { print $1 }
	')
	if [ -z "$libs" ]; then
		echo "$me: ldd reported no libraries for $b; is it static? (then it needs none, but check)" >&2
	fi
	for lib in $libs; do
		mkdir -p "$rootfs$(dirname "$lib")"
		cp -L "$lib" "$rootfs$lib"
	done

	loader=$(printf '%s\n' $libs | grep '/ld-linux' | head -n 1 || true)
	if [ -n "$loader" ]; then
		libpath=$(printf '%s\n' $libs | grep -v '/ld-linux' | xargs -r -n1 dirname | sort -u | sed "s|^|$rootfs|" | paste -sd: -)
		if ! "$rootfs$loader" --library-path "$libpath" "$rootfs$d" "$arg" >/dev/null; then
			echo "$me: the copied $(basename "$d") does not run with the copied libraries" >&2
			exit 1
		fi
	fi
}

set -- $extras
while [ $# -gt 0 ]; do
	copy "$1" "$2" --version
	shift 2
done
copy "$bin" "$dest" "$check"
echo "$name context: $dir ($(du -sh "$rootfs" | cut -f1), $(printf '%s\n' $libs | wc -l) libraries)"
