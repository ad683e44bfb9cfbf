// Package cluster holds the multi-node integration tests: several
// channelsd containers sharing one Redis, started by test/harness, driven
// over real WebSockets and the HTTP API from this host.
//
// The tests cover what only a cluster shows: broadcasts reaching every
// node once and in publish order (from a client and from the HTTP API),
// broadcast_from excluding only the sender, disconnect by socket id on
// every node, a Redis outage and recovery without restarting nodes, and a
// node killed with SIGKILL while the others carry on. TestRedisCluster,
// TestRedisClusterFailover and TestRollingRestart run the fan-out,
// presence, node-kill, long-poll and drain scenarios, unchanged, on a
// Redis Cluster of three masters (harness.Options.RedisCluster), the
// failover suite over TLS with an ACL user.
//
// They need a Docker engine and the images built by `make images`
// (test/images/build.sh); without them they fail, saying so. Nothing is
// pulled. See test/README.md.
package cluster
