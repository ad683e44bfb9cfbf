// Package channels is the Phoenix Channels programming model in Go and the
// runtime that speaks it to clients.
//
// The wire protocol (PROTOCOL.md at the repository root) is in message.go
// and the serializers: a Message is [join_ref, ref, topic, event,
// payload]; V1 writes it as a JSON object, V2 as a JSON array or, for raw
// bytes, a binary frame. Payloads stay raw JSON (or raw bytes) all the way
// through, so a broadcast is never decoded and encoded again. They are
// checked once where they enter (validate.go): every text frame a client
// is sent is valid UTF-8 and valid JSON, whoever sent the bytes.
//
// An application is a Router of topic patterns to Channel factories and a
// SocketHandler that authenticates connections:
//
//	router := &channels.Router{}
//	router.Handle("room:*", func(topic string) channels.Channel { return &Room{} })
//
// Each join gets a fresh Channel value and a *ChannelSocket through which
// it pushes, replies, broadcasts and tracks presence. The runtime (Socket)
// implements the reserved events exactly as Phoenix does: heartbeats on
// "phoenix", phx_join and its replies, duplicate joins closing the older
// instance, phx_leave, stale join_refs dropped, unmatched topics answered
// with an error, and a panicking callback turned into phx_error for that
// channel alone. An error's text reaches the client only from the
// constructors made for it (Refuse, JoinError, ConnectError); any other
// error is logged and answered with a fixed reason (Channel, SocketHandler).
//
// Concurrency: all callbacks of one socket run one at a time (the socket's
// callback lock), on the goroutine that reads the connection, except
// HandleOut, which runs on a short-lived goroutine so that a broadcaster
// never waits for a channel. Push, Reply and Broadcast are safe from any
// goroutine. Lock order: see locksordering.txt at the repository root.
//
// Transports (package transport) bring connections to an Endpoint:
// Endpoint.Connect authenticates, Endpoint.Open starts a Socket over a
// Conn, Socket.HandleFrame feeds it client frames and Socket.HandleClose
// ends it. Broadcasts reach a socket through its ChannelSockets, which are
// pubsub subscribers: the shared encoding of a broadcast for the socket's
// serializer goes straight to Conn.Send.
//
// # History and recovery
//
// When the endpoint's PubSub is a pubsub.History, topics its policy
// selects keep their recent broadcasts, each with a position
// "<epoch>:<offset>" (PROTOCOL.md §12). The policy comes from the node's
// rules and from the application's Router:
//
//	router.History("room:*", pubsub.HistoryOptions{Size: 100, TTL: 5 * time.Minute})
//	ps.SetHistoryPolicy(router.HistoryPolicy(pubsub.RulesPolicy(rules)))
//
// A broadcast of such a topic reaches the client with its position as the
// frame's ref (V1 and V2 text frames; a V2 binary broadcast has no ref and
// carries none). phoenix.js hands the ref to on() callbacks as their
// second argument, so a client keeps the last one it saw and passes it
// when it (re)joins, through the params function that phoenix.js calls
// at every join:
//
//	let last = null
//	const ch = socket.channel("room:lobby", () => (last ? {since: last} : {}))
//	ch.on("new_msg", (msg, ref) => { if (ref) last = ref })
//
// The join then replays what the client missed, in order, before any live
// broadcast, and its ok reply says where it stands: "position", and
// "recovered" with a "reason" when the gap could not be filled
// ({"history": N} asks for the last N broadcasts instead). The reply
// gains these keys only when the channel's Join response is a JSON object
// ({} by default); any other response is sent unchanged. A joined channel
// that sees a hole in its topic's positions (a broadcast lost between
// nodes) fails as a crashed channel does, phx_error, so that the client
// rejoins and recovers. Topics outside the policy carry no positions and
// behave exactly as without history. recovery.go has the mechanics; the
// long-poll transport needs nothing of its own, as it runs the same
// Socket.
//
// Intercepted events reach HandleOut in position order, replayed ones
// included, but what HandleOut pushes is a push, without a position
// (PROTOCOL.md §12.2): a client tracks positions from the events the
// channel does not intercept.
package channels
