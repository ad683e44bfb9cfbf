package channels

import (
	"context"
	"fmt"
	"net/http"
)

// ConnectInfo is what a SocketHandler sees of a connection request.
type ConnectInfo struct {
	// Params are the query parameters, vsn included; the last value wins
	// when a name repeats.
	Params map[string]string
	// Header holds the request headers of the upgrade (or the long-poll
	// request that opened the session).
	Header http.Header
	// RemoteAddr is the peer's address as the listener saw it.
	RemoteAddr string
	// Transport names the transport: "websocket" or "longpoll".
	Transport string
	// AuthToken is the bearer token a client passed in the
	// Sec-WebSocket-Protocol header or X-Phoenix-AuthToken (§1.4), if any.
	AuthToken string
}

// Identity is what a successful connect yields.
type Identity struct {
	// ID names the socket for disconnect-by-id ("" for anonymous sockets).
	// Every socket with the same ID is closed by one Disconnect call.
	ID string
	// Assigns are copied into every channel the socket joins.
	Assigns map[string]any
}

// SocketHandler authenticates connections, Phoenix's connect/3 and id/1.
type SocketHandler interface {
	// Connect accepts the connection with an identity or refuses it with an
	// error. Its contract:
	//   - a nil error accepts the connection with the Identity;
	//   - an error that is, or wraps (errors.As), a *ConnectError refuses
	//     with its HTTP status, and over WebSocket its Reason as the body
	//     (long-poll answers {"status":N} only);
	//   - any other error is never shown to the client: the transport
	//     logs it and refuses with 403 and an empty body (PROTOCOL.md
	//     §5.1), so a database error cannot reach a browser.
	Connect(ctx context.Context, info *ConnectInfo) (Identity, error)
}

// SocketHandlerFunc adapts a function to SocketHandler.
type SocketHandlerFunc func(ctx context.Context, info *ConnectInfo) (Identity, error)

// Connect implements SocketHandler.
func (f SocketHandlerFunc) Connect(ctx context.Context, info *ConnectInfo) (Identity, error) {
	return f(ctx, info)
}

// ConnectError refuses a connection with a specific HTTP status. It is
// the only error whose content reaches the client from Connect
// (SocketHandler), wrapped or not.
type ConnectError struct {
	Status int    // HTTP status; 0 means 403
	Reason string // sent as the response body
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("channels: connect refused (%d): %s", e.HTTPStatus(), e.Reason)
}

// HTTPStatus returns the status to answer with.
func (e *ConnectError) HTTPStatus() int {
	if e.Status == 0 {
		return http.StatusForbidden
	}
	return e.Status
}

// Conn is the transport's side of one socket. The socket runtime hands it
// encoded frames; the transport owns buffering, the wire and the close.
type Conn interface {
	// Send queues f for delivery and returns without waiting for the wire.
	// It fails once the connection is closing, or when its outbound queue
	// is full; in that case the transport closes the connection itself as
	// a slow consumer. f.Data is shared and must not be modified.
	Send(f Frame) error
	// Close ends the connection with a WebSocket close code (RFC 6455
	// §7.4) and a reason; transports without close frames map them.
	Close(code int, reason string)
}

// BacklogConn is implemented by the Conns whose outbound queue the
// runtime can watch, so that it can pace what it sends in bulk (the
// broadcasts a join replays from history) by what the client actually takes,
// instead of overflowing the queue and having the connection closed as a
// slow consumer. The WebSocket and long-poll transports implement it; a
// Conn that does not is sent to unpaced.
//
// Contract:
//   - Backlog returns the frames Send has queued that the transport has
//     not yet handed on (WebSocket: written to the kernel; long-poll:
//     taken by a poll answer), their bytes as the transport counts them
//     against its limit, and those limits: Send fails once a frame would
//     take the backlog past maxFrames or maxBytes, except into an empty
//     queue, which takes any one frame. A limit of 0 means none.
//   - WaitBacklog returns nil as soon as the backlog is at most frames and
//     at most bytes, at once if it already is; ErrConnClosed once the
//     connection is closing, at once if it already is; ctx's error if ctx
//     ends first.
//   - WaitBacklog is woken by the transport when it drains the queue or
//     closes, not by polling, and never holds up Send or the transport's
//     writer. Any number of goroutines may wait at once.
type BacklogConn interface {
	Conn
	Backlog() (frames, bytes, maxFrames, maxBytes int)
	WaitBacklog(ctx context.Context, frames, bytes int) error
}

// HoldConn is implemented by the Conns that can keep what Send queues
// from leaving for a moment and then hand it on in one piece. The runtime
// holds a connection from a join's ok reply until AfterJoin has run, so
// that the reply and what AfterJoin pushes (presence_state, above all)
// leave in one write on WebSocket and in one poll answer on long-poll:
// on a presence join storm a socket write was the largest cost left, and
// a second one per join for the presence_state was avoidable. The order
// of frames is never changed, only when they are handed on.
//
// Contract:
//   - Hold and Release come in pairs; holds nest, and what was queued
//     meanwhile is handed on when the last one is released. Release may
//     be called from any goroutine.
//   - While held, Send queues as ever, with the same limits (a slow
//     consumer is still closed at once); the transport only does not
//     start handing the queue on. A hand-off already under way may finish.
//   - Close is never held: it hands on what is queued, then closes.
//   - Nobody may wait for the backlog to drain (WaitBacklog) while
//     holding the connection: it would not drain.
type HoldConn interface {
	Conn
	Hold()
	Release()
}

// Close codes the runtime uses (RFC 6455 §7.4.1). None of them is 1000:
// phoenix.js up to 1.8.12 does not reconnect after a 1000 close
// (PROTOCOL.md §4.3), and every server-initiated close here expects the
// client to come back.
const (
	CloseGoingAway     = 1001 // server shutdown, disconnect by id
	CloseProtocolError = 1002
	CloseInvalidData   = 1007 // malformed frames, invalid UTF-8
	ClosePolicy        = 1008 // slow consumer, abuse
	CloseTooBig        = 1009 // frame above the size limit
	CloseInternalError = 1011
	// CloseServiceRestart asks the client to reconnect, to another node:
	// a drain, or rebalancing (PROTOCOL.md §5.3, as Phoenix's drainer).
	CloseServiceRestart = 1012
	CloseTryAgainLater  = 1013
)
