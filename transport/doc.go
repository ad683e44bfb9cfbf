// Package transport carries Phoenix Channels sockets over the wire. It owns
// framing, buffers, timeouts and close codes; the socket runtime
// (package channels) sees only complete messages in and encoded frames out.
//
// The WebSocket transport, WebSocketHandler, is built on github.com/gobwas/ws
// primitives rather than on a connection object, so that it can decide
// itself what an open connection costs. It is designed so that an idle
// connection, the common state of a real-time server (phoenix.js sends one
// heartbeat every 30 s and nothing else), holds no I/O buffer and no writer
// goroutine: a few hundred bytes of structs plus one parked goroutine with
// the smallest stack the runtime gives out.
//
// # Handshake
//
// ServeHTTP checks a request in Phoenix's order (PROTOCOL.md §1.3): method
// (400), origin (403), bearer token lifted out of Sec-WebSocket-Protocol
// (§1.4), subprotocol (403), protocol version through channels.Negotiate
// (403), then the application's connect through Endpoint.Connect, whose
// refusal is a plain HTTP answer with the status of a *channels.ConnectError
// and its reason as the body. Only then does ws.HTTPUpgrader hijack and
// upgrade the connection (RFC 6455 §4.2.2). net/http's hijacked bufio
// buffers are dropped at once; bytes a client sent ahead of the 101 answer
// are copied out first. The handler then calls Endpoint.Open, starts the
// connection's reader and returns, which ends net/http's goroutine for the
// connection.
//
// # Read path
//
// The reader is parked in a one-byte read into a field of the connection.
// When that byte arrives it takes a bufio.Reader from a sync.Pool, reads
// the frame header with ws.ReadHeaderBuffer, checks it with ws.CheckHeader
// (masking, reserved bits and opcodes, fragmentation order: RFC 6455 §5.1,
// §5.2, §5.4), unmasks with ws.Cipher and handles it: a message that fits
// the read buffer in one frame is handed to Socket.HandleFrame straight out
// of that buffer; fragments are reassembled in a pooled buffer, with
// control frames allowed between them; pings are answered with pongs,
// close frames are echoed (§5.5). Text must be UTF-8 (1007), messages
// above MaxFrameSize are refused before their payload is read (1009),
// other violations close with 1002 (§7.4.1). When nothing more is
// buffered, the bufio.Reader goes back to the pool and a fresh goroutine
// parks in the next one-byte read, while the one that handled the frames
// exits and frees the stack that handling grew. Every frame restarts the
// read deadline of IdleTimeout; a connection that stays silent past it
// is closed with 1001.
//
// Over TLS served by this process the budget does not hold: a crypto/tls
// connection keeps record buffers of its own between reads. Terminate TLS
// in front of the node (the load balancer) where memory per idle socket
// matters.
//
// # Write path
//
// Send appends the frame to a bounded per-connection queue under a mutex
// and returns at once. If no flush is running it starts one: a goroutine
// that takes a pooled bufio.Writer, writes every queued frame (the header
// with ws.WriteHeaderBuffer, then the shared, never modified Data; server
// frames are unmasked), so that frames queued meanwhile share a flush,
// and exits when the queue is empty, dropping the queue's array. Each
// flush has WriteTimeout. A queue that reaches MaxQueue frames or
// MaxQueueBytes marks a slow consumer: Send returns
// channels.ErrSlowConsumer, the queue is dropped and the connection closed
// with 1008, and no broadcaster ever waits for a client.
//
// # Closing
//
// Close queues a close frame behind what is queued, bounds the rest of the
// connection by CloseTimeout, and returns. The flush writes the close frame
// and half-closes the TCP connection (RFC 6455 §7.1.1: the server closes
// first); the reader discards input until the client closes its side or
// the deadline passes, then closes the connection and calls
// Socket.HandleClose, exactly once, whatever ended the connection. No
// server-initiated close uses 1000: phoenix.js does not reconnect after
// it (PROTOCOL.md §4.3).
//
// The long-poll transport will join this package.
package transport
