package node

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The HTTP server's own bounds (README "Limits"), for the connections
// that are not sockets: keep-alive connections between requests, requests
// whose bodies trickle in, answers a client does not read, oversized
// request heads, and too many connections at once. The request headers
// are bounded by HandshakeTimeout (limits.go). WebSocket connections leave
// the server when upgraded and long polls wait by design, so neither gets
// the server-wide ReadTimeout or WriteTimeout, which would cut them (and
// which net/http turns into a cancelled request context for a waiting
// poll): deadlines are set per request instead (requestDeadlines).

// Defaults of the HTTP server's bounds in Config.
const (
	// DefaultHTTPIdleTimeout closes a keep-alive connection idle this long
	// between two requests, as Cowboy does.
	DefaultHTTPIdleTimeout = 60 * time.Second
	// DefaultHTTPRequestTimeout bounds reading one request's body, and
	// writing one answer that is not a socket's.
	DefaultHTTPRequestTimeout = 30 * time.Second
	// DefaultMaxHeaderBytes bounds a request's line and headers together:
	// Cowboy takes a request line of 8,000 bytes and headers of 4,096 each;
	// a socket's token in the query and a few cookies fit well within.
	DefaultMaxHeaderBytes = 32 << 10
	// DefaultMaxConnectionsMargin: the default connection bound is
	// MaxSockets plus this, under the 20,000 open files of the container
	// engine (BENCHMARKS.md) with the default MaxSockets.
	DefaultMaxConnectionsMargin = 500
)

// connTracker counts the server's TCP connections (the ConnState hook)
// and enforces MaxConnections: a connection over the bound first evicts a
// keep-alive connection idle between requests, the cheapest to lose (its
// client opens another when it next needs one); when none is idle the new
// connection is closed unanswered, as accept would fail once descriptors
// run out, but without reaching that point, so probes and sockets still
// open once the load passes.
type connTracker struct {
	max         int // 0: no bound
	idleTimeout time.Duration

	plain atomic.Int64 // connections not hijacked (upgraded), open
	// idle holds the connections idle between two requests, with the time
	// they became idle.
	idle sync.Map // net.Conn -> time.Time

	refused      atomic.Uint64 // closed on arrival: over the bound, none idle
	evicted      atomic.Uint64 // idle connections closed to make room
	idleTimeouts atomic.Uint64 // idle connections the server closed at its IdleTimeout
}

// connState is the server's ConnState hook. Upgraded connections count
// through the WebSocket transport's open count, until they close.
func (n *Node) connState(c net.Conn, state http.ConnState) {
	t := &n.conns
	switch state {
	case http.StateNew:
		open := t.plain.Add(1) + n.ws.Stats().Open.Load()
		if t.max > 0 && open > int64(t.max) && !t.evictIdle() {
			t.refused.Add(1)
			_ = c.Close() // the server then reports StateClosed
		}
	case http.StateIdle:
		t.idle.Store(c, time.Now())
	case http.StateActive:
		t.idle.Delete(c)
	case http.StateHijacked:
		t.plain.Add(-1)
	case http.StateClosed:
		t.plain.Add(-1)
		if since, ok := t.idle.LoadAndDelete(c); ok && t.idleTimeout > 0 && time.Since(since.(time.Time)) >= t.idleTimeout {
			t.idleTimeouts.Add(1)
		}
	}
	n.trackHandshake(c, state)
}

// evictIdle closes one idle connection, if any, and reports whether it
// did.
func (t *connTracker) evictIdle() bool {
	evicted := false
	t.idle.Range(func(k, _ any) bool {
		if _, ok := t.idle.LoadAndDelete(k); ok {
			_ = k.(net.Conn).Close()
			t.evicted.Add(1)
			evicted = true
		}
		return !evicted
	})
	return evicted
}

// requestDeadlines wraps the node's handler: a request's body must arrive
// within RequestTimeout, and an answer other than a socket transport's
// must be written within it.
func (n *Node) requestDeadlines(h http.Handler) http.Handler {
	d := n.cfg.HTTPRequestTimeout
	if d <= 0 {
		return h
	}
	socketPrefix := n.cfg.SocketPath + "/"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			_ = rc.SetReadDeadline(time.Now().Add(d))
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, timeouts: &n.bodyTimeouts}
		}
		if !strings.HasPrefix(r.URL.Path, socketPrefix) {
			_ = rc.SetWriteDeadline(time.Now().Add(d))
			// The connection may serve a long poll or an upgrade next.
			defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the read deadline once the body has been read: the
// server then reads on in the background only to notice the client
// leaving, which a waiting long poll relies on, and which a deadline
// would turn into a cancelled request. Should the handler stop early, the
// deadline stays and bounds what the server reads after it.
type deadlineBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	timeouts *atomic.Uint64
	done     bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.done {
		b.done = true
		if errors.Is(err, os.ErrDeadlineExceeded) {
			b.timeouts.Add(1)
			return n, err
		}
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
