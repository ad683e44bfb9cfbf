// Package harness runs a channelsd cluster in Docker for integration
// tests: one Redis container and N node containers on a network of their
// own, each node's port 4000 published on 127.0.0.1 so that tests reach
// it as a client would.
//
// Images are built locally (test/images/build.sh, `make images`), never
// pulled: Start fails at once, saying so, when an image is missing or the
// Docker engine cannot be reached. Image names come from NODE_IMAGE
// (default channelsd:test) and REDIS_IMAGE (default channelsd-redis:test).
//
// With Options.RedisCluster the nodes run on a Redis Cluster of three
// masters with a replica each, made of REDIS_CLUSTER_IMAGE (default
// REDIS_IMAGE; sharded pub/sub needs Redis 7, e.g. redis:7) and formed by
// redis-cli --cluster create in a few seconds. Its nodes announce their
// network aliases, which the channelsd nodes resolve and this host does
// not: RedisClient reaches them from here through their published ports.
// Options.RedisClusterTLS and RedisClusterUser run it as managed services
// do, on TLS only with a CA and certificates the harness makes, and with
// an ACL user for the nodes (redissecure.go).
//
// An earlier release runs from its own image: BuildNodeImageAt builds
// it from git (the commit's tree, this host's Go toolchain, nothing
// pulled) once, Options.Image starts nodes on it and ReplaceNodeWith rolls
// a node to another image, as a rolling update does.
//
// Everything Start creates is removed in t.Cleanup, whether the test
// passes or not. When the test has failed (or CLUSTER_LOGS=1) the tail of
// every container's log is written to the test log first; with
// CLUSTER_LOG_DIR=dir the whole logs are also saved there.
//
// testcontainers settings: unless set already, Start sets
// TESTCONTAINERS_RYUK_DISABLED=true (the reaper image is not pulled; the
// cleanup removes what a test created) and
// TESTCONTAINERS_HOST_OVERRIDE=localhost (published ports are reached on
// loopback, never through a gateway address).
package harness
