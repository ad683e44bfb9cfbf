package channels

// Runtime is the side of an Endpoint that transports and the node drive:
// Connect and Open bring connections in, HandleFrame and HandleClose run
// each Socket (package transport); BeginShutdown, BeginDrain, Drained,
// CloseAll, CloseSocket, Generation and CloseOldest end or move them
// (package node). Applications and channel authors do
// not need it; it is kept apart so that Endpoint and ChannelSocket show
// only what they call, and Socket shows nothing.
//
// A Runtime is its Endpoint seen through another method set, not a copy:
// every Runtime of one Endpoint shares its sockets and state. Its methods
// name their receiver e for that reason.
type Runtime Endpoint

// Runtime returns the transport and node side of e.
func (e *Endpoint) Runtime() *Runtime { return (*Runtime)(e) }

// HandleFrame hands s, a socket e opened, one frame from its client. data
// is only read during the call; the transport may reuse it afterwards.
// The transport calls it from one goroutine at a time.
//
// A message that does not decode closes the socket with 1007, counted in
// MalformedFrames: Phoenix's connection process crashes on one, and the
// connection drops. Not 1000, after which phoenix.js would not reconnect;
// a long-poll session ends (its next request gets 410). The transport
// decides about frames that are broken below this level (invalid UTF-8,
// oversized).
//
// Every message, heartbeats included, passes the rate limit first (unless
// it is turned off), then the size limits (README "Limits").
func (e *Runtime) HandleFrame(s *Socket, data []byte, binary bool) { s.handleFrame(data, binary) }

// HandleClose ends every channel of s with ReasonClosed, without frames
// (§3.7: the connection is gone), and releases the socket. The transport
// calls it exactly once, after the connection has ended.
func (e *Runtime) HandleClose(s *Socket) { s.handleClose() }

// CloseSocket asks s's transport to close the connection with code and
// reason; HandleClose follows.
func (e *Runtime) CloseSocket(s *Socket, code int, reason string) { s.conn.Close(code, reason) }
