// Package channels is the Phoenix Channels programming model in Go and the
// runtime that speaks it to clients (phoenix.js and compatible ones).
//
// # A first channel
//
// A Channel is one client's presence on one topic. It answers the join,
// handles what the client pushes, and can push, reply and broadcast:
//
//	type Room struct{}
//
//	func (r *Room) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
//		return nil, nil // ok, reply {}
//	}
//
//	func (r *Room) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
//		_ = s.Broadcast(in.Event, in.Payload) // to everyone on the topic
//		return channels.Ok(nil)               // and reply to the sender
//	}
//
// A Router maps topic patterns to a factory that makes one Channel value
// per join; package node serves it (its Example runs a whole node with a
// client):
//
//	router := &channels.Router{}
//	router.Handle("room:*", func(topic string) channels.Channel { return &Room{} })
//	n, err := node.New(node.Config{Router: router})
//
// # Concepts
//
// Topic and join: a client joins a topic ("room:lobby"); the Router picks
// the factory, the factory makes a fresh Channel, and Join accepts (its
// response is sent in the ok reply) or refuses (an error; Refuse and
// JoinError choose the reply). Each join gets its own Channel value and
// its own *ChannelSocket, so the Channel's fields are that join's state.
//
// Messages out: ChannelSocket.Push sends to this client alone; Reply
// answers one of its pushes, now or later (HandleIn's Result answers at
// once); Broadcast reaches every subscriber of the topic, on every node
// the PubSub connects; BroadcastFrom every one but this join.
//
// Errors: an error's text reaches the client only from the constructors
// made for it (Refuse, JoinError, ConnectError, found with errors.As so
// that wrapping keeps them); any other error is logged and answered with a
// fixed reason ("join crashed", an empty 403).
//
// Sockets: a SocketHandler authenticates each connection before any join
// (Phoenix's connect/3) and names it with an Identity; every socket with
// the same id is closed by one Endpoint.Disconnect.
//
// Optional behaviours: a Channel that also implements AfterJoiner acts
// once the join reply is queued (track presence, push the room's state);
// one that implements Interceptor rewrites chosen broadcasts per
// subscriber in HandleOut; one that implements Terminator is told when
// it ends and why (Phoenix's optional terminate/2; a channel without it is
// cleaned up all the same). They are found by type assertion, so a
// misspelled method compiles and never runs; check them at compile time:
//
//	var _ channels.Interceptor = (*Room)(nil)
//
// (the endpoint also logs a warning, once per type, for a method that
// looks meant for one of them but does not match it).
//
// Presence: ChannelSocket.Track makes a key (a user id) present on the
// topic for as long as the join lives; subscribers receive presence_diff
// events and PushPresenceState sends the whole room (package presence).
//
// # Concurrency
//
// All callbacks of one socket run one at a time, under the socket's
// callback lock: Join, AfterJoin, HandleIn and Terminate on the goroutine
// that reads the connection, HandleOut on a goroutine of its own so that
// a broadcaster never waits for a channel. A Channel therefore needs no
// lock for its own fields, and a slow callback delays the socket's next
// message: do slow work on a goroutine and answer with Reply. Push, Reply,
// Broadcast and BroadcastFrom are safe from any goroutine. Lock order:
// locksordering.txt at the repository root.
//
// A join that needs slow work (a database, an HTTP backend) is answered
// the same way: Join returns Pending, starts the work, and the work calls
// ChannelSocket.CompleteJoin with what Join would have returned:
//
//	func (r *Room) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
//		go func() { s.CompleteJoin(r.authorize(s.Context(), params)) }()
//		return channels.Pending(), nil
//	}
//
// Until the answer the join is pending: the socket reads on (heartbeats,
// other topics, other joins), what the channel pushes is held, and the
// client's pushes on the topic wait; then everything that follows a Join
// that returned the answer follows, in the same order (the reply, the
// held frames, AfterJoin, the history's recovery, the pushes that
// waited). A leave, a new join of the topic or the connection's close
// ends a pending join: Terminate is told, its Context ends, the late
// answer is dropped (CompleteJoin returns ErrJoinNotPending), and the
// client's pushes that waited are answered {"reason":"unmatched topic"},
// as they are after a refusal (PROTOCOL.md §3.3). A join not
// answered within EndpointConfig.JoinTimeout gets the error reply
// {"reason":"join timeout"} and ends with ReasonJoinTimeout. A pending
// join counts toward MaxChannels and in Stats.Channels.
//
// Order: the broadcasts one node publishes on a topic reach each
// subscriber in that order (the pubsub contract), with one exception:
// intercepted broadcasts wait in a queue for HandleOut, so what HandleOut
// pushes can arrive after broadcasts of events that are not intercepted
// and were published later.
//
// # Protocol and limits
//
// The runtime (Socket) implements the reserved events as Phoenix does
// (PROTOCOL.md at the repository root): heartbeats on "phoenix", phx_join
// and its replies, a duplicate join closing the older instance,
// phx_leave, stale join_refs dropped, unmatched topics answered with an
// error, and a panicking callback turned into phx_error for that channel
// alone. A Message is [join_ref, ref, topic, event, payload]; V1 writes it
// as a JSON object, V2 as a JSON array or, for raw bytes (Binary), a
// binary frame. Payloads stay raw JSON all the way through, so a
// broadcast is encoded once per wire format, never decoded; they are
// checked once where they enter, so every text frame a client is sent is
// valid UTF-8 and valid JSON (ValidatePayload).
//
// Every client message passes a per-socket rate limit and size limits
// (EndpointConfig). Their zero values are channelsd's defaults, listed
// once in the README, section "Limits"; a negative value turns one off.
//
// Transports (package transport) bring connections to an Endpoint through
// its Runtime, the side applications do not need: Runtime.Connect
// authenticates, Runtime.Open starts a Socket over a Conn,
// Runtime.HandleFrame feeds it client frames and Runtime.HandleClose ends
// it.
// The node drains and sheds sockets through the Runtime too. Broadcasts
// reach a socket through its joins, each subscribed to its topic (by an
// adapter, so the registry's methods are not ChannelSocket's): the shared
// encoding of a broadcast for the socket's serializer goes straight to
// Conn.Send.
//
// # History and recovery
//
// When the endpoint's PubSub is a pubsub.History, topics its policy
// selects keep their recent broadcasts, each with a position
// "<epoch>:<offset>" (PROTOCOL.md §12). The policy comes from the node's
// rules and from the application's Router:
//
//	router.History("room:*", pubsub.HistoryOptions{Size: 100, TTL: 5 * time.Minute})
//	ps.SetHistoryPolicy(pubsub.RulesPolicy(rules, router.HistoryPolicy(nil)))
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
// behave exactly as without history. Both transports run the same
// Socket, so long-poll clients recover as WebSocket ones do.
//
// Intercepted events reach HandleOut in position order, replayed ones
// included, but what HandleOut pushes is a push, without a position
// (PROTOCOL.md §12.2): a client tracks positions from the events the
// channel does not intercept.
package channels
