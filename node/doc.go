// Package node runs one channelsd process: it builds the channel endpoint
// over a PubSub and a presence Tracker (in memory unless the caller passes
// clustered ones), mounts the transports under the socket path, serves the
// HTTP API (/api/broadcast, /api/disconnect, /api/drain), the probes
// (/healthz, /readyz) and the application's home page, and owns the
// lifecycle: Start, optionally Drain, then Shutdown, which drains (if not
// done yet) by closing sockets with close code 1012 in batches over the
// drain window so that clients reconnect to other replicas (drain.go).
//
// Dependencies point one way: node uses channels, transport, pubsub and
// presence; none of them knows about node.
package node
