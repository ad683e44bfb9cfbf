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
// Dependencies point one way: node uses channels (and channels/auth, for
// the dashboard's channel), transport, pubsub and presence; none of them
// knows about node.
package node
