// Package node runs one channelsd server inside a Go program: the
// WebSocket and long-poll transports, the channel endpoint, the HTTP API,
// probes and metrics, and the lifecycle (start, drain, shut down).
//
// # A first server
//
//	func main() {
//		router := &channels.Router{}
//		router.Handle("room:*", func(topic string) channels.Channel { return &Room{} })
//		n, err := node.New(node.Config{Addr: ":4000", Router: router})
//		if err != nil {
//			log.Fatal(err)
//		}
//		if err := n.Start(); err != nil { // serves in the background
//			log.Fatal(err)
//		}
//		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//		defer stop()
//		<-ctx.Done()
//		n.Shutdown(context.Background())
//	}
//
// Room is a channels.Channel (see package channels). phoenix.js then
// connects to ws://host:4000/socket. The package Example runs a node and a
// client that exchange a push, a reply and a broadcast.
//
// # Concepts
//
// Config: every field has a default, and the zero Config with a Router is
// a working single node with channelsd's limits (README "Limits" lists
// them; a negative value turns a limit off). SocketHandler authenticates
// connections; without one every socket is anonymous.
//
// One node or a cluster: PubSub and Presence default to in-memory
// implementations, so broadcasts and presence stay within the process.
// Pass pubsub/redis and presence/redis ones to share them across nodes.
//
// Lifecycle: New builds, Start listens and serves in the background, and
// Shutdown stops once, gracefully: it drains first (see Drain; the
// sockets are closed with 1012 over Config.DrainWindow so that clients
// reconnect to other replicas), then closes presence (this node's users
// leave) and the PubSub. Start does not block: the program must wait
// (for a signal, say) before it calls Shutdown.
//
// From Go: Endpoint broadcasts and disconnects sockets by id; Handler is
// the node's whole HTTP handler, for embedding in another server.
//
// # What it serves
//
// Under Config.SocketPath ("/socket"): /websocket and /longpoll. The
// operators' endpoints: /api/broadcast, /api/disconnect, /api/drain,
// /api/history, /metrics and /dashboard, which answer whoever presents
// Config.APIKey as a bearer token, or, without a key, loopback clients
// only. The probes /healthz and /readyz (503 once a drain begins, while
// Redis does not answer, and, on a node just started in a cluster, until
// the live nodes have reported what they read, so that the load balancer
// sends it nothing it would relay in an older form), and Config.Home at
// "/".
//
// Connections that are not sockets (API calls, probes) are bounded by the
// HTTP server's own limits (HTTPIdleTimeout, HTTPRequestTimeout,
// MaxHeaderBytes, MaxConnections).
//
// # Clustering
//
// Config.Redis, a URL, is the one setting that clusters a node, as a
// Phoenix application names its PubSub adapter once and Presence
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
