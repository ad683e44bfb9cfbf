// Package transport carries Phoenix Channels sockets over the wire. It owns
// framing, buffers, timeouts and close codes; the socket runtime
// (package channels) sees only complete messages in and encoded frames out.
//
// The WebSocket transport, WebSocketHandler, is built on github.com/gobwas/ws
// primitives rather than on a connection object, so that it can decide
// itself what an open connection costs. It is designed so that an idle
// connection, the common state of a real-time server (phoenix.js sends one
// heartbeat every 30 s and nothing else), holds no I/O buffer and no
// goroutine: on Linux, a few hundred bytes of structs, a bare descriptor
// (not a net.Conn, whose runtime poll descriptor and addresses cost more
// than the rest) and an entry in the handler's epoll instance. With ParkedReads, and on other platforms, it
// holds one parked reader goroutine with the smallest stack the runtime
// gives out (2 KiB or more: the largest item of an idle connection then).
//
// # Handshake
//
// ServeHTTP checks a request in Phoenix's order (PROTOCOL.md §1.3): method
// (400), origin (403), bearer token lifted out of Sec-WebSocket-Protocol
// (§1.4), subprotocol (403), protocol version through channels.Negotiate
// (403), then the application's connect through Endpoint.Connect, whose
// refusal is a plain HTTP answer with the status of a *channels.ConnectError
// and its reason as the body; any other error is logged and answered 403
// with an empty body, never with its text (§5.1). Only then does ws.HTTPUpgrader hijack and
// upgrade the connection (RFC 6455 §4.2.2). net/http's hijacked bufio
// buffers are dropped at once; bytes a client sent ahead of the 101 answer
// are copied out first. The handler then calls Endpoint.Open, hands the
// connection to its read path (below) and returns, which ends net/http's
// goroutine for the connection.
//
// # Read path
//
// A connection waits for its next frame in one of two ways, and reads the
// frames that then arrive (a burst) the same way in both.
//
// Event-driven (Linux, the default). A connection that waits holds no
// goroutine. The handler runs a reactor: an epoll instance with every
// waiting connection's descriptor registered for EPOLLIN | EPOLLRDHUP |
// EPOLLONESHOT, a table from descriptor to connection, and one goroutine
// waiting for its events (parked in the runtime's poller, which watches
// the epoll descriptor too). When a descriptor is readable, that goroutine starts a goroutine for the connection, which
// reads the burst and then re-arms the registration (one-shot: exactly one
// reader per readiness) and exits. A goroutine per readiness rather than a
// fixed pool of workers, because a burst may block in the middle of a
// frame for up to IdleTimeout, and a few slow clients would starve a pool;
// and because a goroutine that exits frees the stack that handling grew.
// A connection that waits there has let go of its net.Conn and keeps a
// duplicate of its descriptor (wsconn_fd.go): the burst reads it with
// read(2), which returns at once on a readable descriptor, and writers
// write it with write(2), as they do anyway. Only a wait takes a file
// registered with the Go runtime's poller on the same descriptor: a
// frame that arrives in pieces parks the burst's goroutine there as in
// the parked mode, a write the kernel does not take whole waits there,
// and the close handshake; the connection lets the file go when it waits
// in epoll again. Descriptors are reused by the kernel after a close, so
// a connection leaves the epoll instance and the table (under its lock)
// before its net.Conn is closed, and every arming carries a new
// generation next to the descriptor, checked before an event is acted
// on: an event left over from a closed connection never reaches the new
// connection on the same descriptor number; and a bare descriptor is
// closed only once no read(2) or write(2) on it is in progress. The reactor starts with the
// first connection and stops with the last one; WebSocketHandler.Close
// stops it at once (connections still open continue in the parked mode).
// Only plain TCP and Unix connections are registered: readiness of a
// crypto/tls connection's descriptor does not tell whether a record is
// buffered, so those (and any other net.Conn) use the parked mode.
//
// Parked (ParkedReads, other platforms, TLS). The reader is parked in a
// one-byte read into a field of the connection; when that byte arrives it
// reads the burst.
//
// A burst takes a bufio.Reader from a sync.Pool, reads the frame header
// with ws.ReadHeaderBuffer, checks it with ws.CheckHeader (masking,
// reserved bits and opcodes, fragmentation order: RFC 6455 §5.1,
// §5.2, §5.4), unmasks with ws.Cipher and handles it: a message that fits
// the read buffer in one frame is handed to Socket.HandleFrame straight out
// of that buffer; fragments are reassembled in a pooled buffer, with
// control frames allowed between them; pings are answered with pongs,
// close frames are echoed (RFC 6455 §5.5). Text must be UTF-8 (1007), messages
// above MaxFrameSize are refused before their payload is read (1009),
// other violations close with 1002 (RFC 6455 §7.4.1). When nothing more is
// buffered, the bufio.Reader goes back to the pool, the connection waits
// again (re-armed in epoll, or a fresh goroutine parks in the next
// one-byte read), and the goroutine that handled the frames exits and
// frees the stack that handling grew.
//
// IdleTimeout: a connection that sends no frame for that long is closed
// with 1001. During a burst, and while a parked reader waits, the read
// deadline enforces it, restarted with every frame; so a frame must also
// arrive whole within IdleTimeout, and a client that trickles a frame out
// a byte at a time does not pin a goroutine. A connection waiting in epoll
// has no read in progress for a deadline to end: it records when its wait
// expires (monotonic clock: IdleTimeout from when it began to wait) and
// clears its read deadline, and the reactor's sweeper, ticking every
// quarter of IdleTimeout (or of MessageTimeout, if shorter) or every
// second, whichever is shorter, closes those whose wait has expired (so up
// to one tick late), at most a few thousand per tick.
//
// A message that is not whole in the read buffer (fragmented, or bigger
// than it) must be whole within MessageTimeout of its first frame; frames
// in between, pings included, do not extend it, so a client cannot keep a
// half-sent message, and its buffer, for as long as it keeps the socket
// alive (1008 "message timeout"; the read deadline, or the sweeper's
// deadline, becomes the earlier of the two). Those buffers count against
// one budget of the handler, MaxMessageBuffers. A
// socket whose buffer would take it past the budget takes the room back
// from the sockets with the oldest messages in progress, which are closed
// with 1013, and is closed itself (1013) only when the messages older
// than its own do not hold enough: sockets that keep the budget full with
// messages they never finish lose their buffers to any newer message, and
// cannot make other clients' messages fail. An evicted socket's reader is
// woken at once, so its buffer is freed without waiting for its client,
// and its bytes leave the count as it is evicted. A finished message's
// buffer returns to the pool, or to the garbage collector when it grew
// past 64 KiB, so a socket that once sent a big message keeps none of it.
//
// Over TLS served by this process the budget does not hold: a crypto/tls
// connection keeps record buffers of its own between reads. Terminate TLS
// in front of the node (the load balancer) where memory per idle socket
// matters.
//
// # Write path
//
// Send appends the frame to a bounded per-connection queue under a mutex
// and returns at once. A connection whose queue stops being empty joins a
// FIFO of connections waiting for a writer. At most GOMAXPROCS
// writer goroutines, started on demand and gone when the FIFO is empty,
// take connections from it in turn: a writer encodes the connection's
// queued frames (the header with ws.WriteHeaderBuffer, then the shared,
// never modified Data; server frames are unmasked) into its own buffer and
// hands them to the kernel in one non-blocking write(2). A connection that
// got more frames meanwhile goes to the back of the FIFO. So an idle
// connection has no writer and no buffer, a broadcast to N sockets costs
// about N system calls and no goroutine each, and under a flood each busy
// connection gets one write per round carrying every frame of that round.
//
// A writer never waits for a client. When the kernel does not take a
// write whole (the client's receive window is full), the rest goes to a
// goroutine of that connection's own, which waits for it with WriteTimeout
// and then writes the connection's queue through a pooled bufio.Writer
// until it is empty. Connections without a plain descriptor (TLS served
// by this process) take that path for every write.
//
// A queue that reaches MaxQueue frames or MaxQueueBytes marks a slow
// consumer: Send returns channels.ErrSlowConsumer, the queue is dropped
// and the connection closed with 1008, and no broadcaster ever waits for
// a client.
//
// # Closing
//
// Close queues a close frame behind what is queued, bounds the rest of the
// connection by CloseTimeout, and returns. The flush writes the close frame
// and half-closes the TCP connection (RFC 6455 §7.1.1: the server closes
// first); the reader discards input until the client closes its side or
// the deadline passes, then closes the connection and calls
// Socket.HandleClose, exactly once, whatever ended the connection. A close
// (or a failed write) that finds the connection waiting in epoll, with no
// reader, claims it and starts that reader itself. No server-initiated
// close uses 1000: phoenix.js does not reconnect after it (PROTOCOL.md
// §4.3).
//
// # Long-poll
//
// LongPollHandler serves <socket path>/longpoll as PROTOCOL.md §8 describes:
// a GET without a valid token opens a session (410 with a token), GETs wait
// up to the window for messages (200) or answer 204, POSTs carry ndjson
// lines (JSON frames, or base64 for binary) that reach the socket in
// order, and a session ends when no GET has come for SessionTimeout. A
// session is the same channels.Socket as a WebSocket one, over a Conn that
// buffers frames for the next poll, bounded in messages and in bytes (past
// either the session ends as a slow consumer); an answer carries at most
// MaxAnswerBytes of them and is written within IOTimeout. The token is
// signed with HMAC-SHA256 and names the node that owns the session; a
// request that reaches another node is relayed to the owner through
// LongPollConfig.Relay.
package transport
