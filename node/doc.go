// Package node runs one channelsd process: it builds the channel endpoint
// over a PubSub and a presence Tracker (in memory unless the caller passes
// clustered ones), mounts the transports under the socket path, serves the
// HTTP API (/api/broadcast, /api/disconnect, /api/drain), the probes
// (/healthz, /readyz) and the application's home page, and owns the
// lifecycle: Start, optionally Drain, then Shutdown, which drains (if not
// done yet) by closing sockets with close code 1012 in batches over the
// drain window so that clients reconnect to other replicas (drain.go).
//
// The operators' endpoints (/api/*, /metrics, /dashboard) answer whoever
// presents the API key, or, without one, local clients only (access.go);
// the HTTP server bounds the connections that are not sockets
// (httpserver.go).
//
// # Clustering
//
// Config.Redis, a URL, is the one setting that clusters a node (redis.go),
// as a Phoenix application names its PubSub adapter once and Presence
// follows: New connects (retrying within RedisOptions.ConnectTimeout, or
// until NewWithContext's context ends) and wires the Redis PubSub and the
// Redis presence tracker together, with the settings channelsd's --redis
// uses; RedisOptions and PresenceLimits reach the rest of its flags. An
// application then imports neither Redis package. One that builds them
// itself (pubsub/redis.New, presence/redis.New, for options not named
// here) passes them as PubSub and Presence; both packages are named redis,
// and this repository imports them as pubsubredis and presenceredis.
//
// Presence returns the node's tracker, whose List is Phoenix's
// Presence.list/1 from Go; a channel lists its own topic with
// channels.ChannelSocket.ListPresence.
//
// Dependencies point one way: node uses channels (and channels/auth, for
// the dashboard's channel), transport, pubsub and presence (with their
// Redis packages); none of them knows about node.
package node
