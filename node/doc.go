// Package node runs one channelsd process: it builds the channel endpoint
// over a PubSub and a presence Tracker (in memory unless the caller passes
// clustered ones), mounts the transports under the socket path, serves the
// HTTP API (/api/broadcast, /api/disconnect), the probes (/healthz,
// /readyz) and the application's home page, and owns the lifecycle: Start,
// then Shutdown, which drains sockets with close code 1001 so that clients
// reconnect to another replica.
//
// Dependencies point one way: node uses channels, transport, pubsub and
// presence; none of them knows about node.
package node
