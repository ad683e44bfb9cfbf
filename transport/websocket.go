package transport

import (
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// WebSocketConfig configures a WebSocketHandler. The zero value is usable:
// every zero field takes the default named in its comment.
type WebSocketConfig struct {
	// IdleTimeout closes a socket (code 1001) that has sent no frame for
	// this long. Any frame counts: data, ping, pong, and so the Phoenix
	// heartbeat every 30 s keeps a healthy client connected. Default 60 s,
	// Phoenix's (PROTOCOL.md §5.5).
	IdleTimeout time.Duration
	// MaxFrameSize is the largest message a client may send, counted over
	// all fragments; a larger one closes the socket with 1009 (RFC 6455
	// §7.4.1). Default 1 MiB.
	MaxFrameSize int64
	// AllowedOrigins lists the origins (scheme://host[:port]) browsers may
	// connect from. Empty or "*" allows every origin. A request without an
	// Origin header is always allowed (PROTOCOL.md §5.4).
	AllowedOrigins []string
	// AuthToken accepts the bearer token that phoenix.js 1.8 sends in the
	// Sec-WebSocket-Protocol header (PROTOCOL.md §1.4).
	AuthToken bool
	// Subprotocols, if set, are the subprotocols the server speaks, in
	// order of preference (PROTOCOL.md §1.3 step 4). A client that offers
	// subprotocols but none of these is refused with 403.
	Subprotocols []string
	// MaxQueue is how many outbound frames may wait for the wire before
	// the socket counts as a slow consumer and is closed (1008). Default
	// 1024.
	MaxQueue int
	// MaxQueueBytes bounds the bytes of those frames. Default 4 MiB. A
	// single frame is accepted into an empty queue whatever its size.
	MaxQueueBytes int
	// WriteTimeout is how long one flush of the queue may take before the
	// connection is dropped. Default 10 s.
	WriteTimeout time.Duration
	// CloseTimeout bounds a server-initiated close: flushing the close
	// frame (RFC 6455 §5.5.1) and then waiting for the client to close its
	// side. Default 2 s.
	CloseTimeout time.Duration
	// HandshakeTimeout bounds the connect callback and the writing of the
	// upgrade response. Default 10 s. (Reading the request is the
	// http.Server's: its ReadHeaderTimeout, which node sets to the same
	// value.)
	HandshakeTimeout time.Duration
	// Sockets, if set, bounds the sockets of the node (shared with the
	// long-poll handler): an upgrade beyond it is answered HTTP 503 with
	// Retry-After and the body "too many sockets".
	Sockets *Slots
	// MaxPendingUpgrades bounds the handshakes in progress at once (from
	// the request to the upgraded connection, the connect callback
	// included); one more is answered HTTP 503 with Retry-After and the
	// body "too many pending upgrades". Default 1000; negative: no bound.
	MaxPendingUpgrades int
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
	// ParkedReads makes every connection wait for its next frame in a
	// goroutine parked in a read, as on platforms without an event
	// notification the transport uses. By default, on Linux, a waiting
	// connection holds no goroutine: the handler's epoll instance tells
	// when it is readable (see the package documentation, "Read path").
	ParkedReads bool
}

// Defaults of WebSocketConfig.
const (
	DefaultIdleTimeout        = 60 * time.Second
	DefaultMaxFrameSize       = 1 << 20
	DefaultMaxQueue           = 1024
	DefaultMaxQueueBytes      = 4 << 20
	DefaultWriteTimeout       = 10 * time.Second
	DefaultCloseTimeout       = 2 * time.Second
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultMaxPendingUpgrades = 1000
)

// Stats are a WebSocketHandler's running counters.
type Stats struct {
	Open          atomic.Int64  // connections upgraded and not yet ended
	Accepted      atomic.Uint64 // upgrades completed
	Refused       atomic.Uint64 // handshakes answered without an upgrade
	SlowConsumers atomic.Uint64 // closed because the outbound queue filled (1008)
	TooBig        atomic.Uint64 // closed for a message above MaxFrameSize (1009)
	InvalidUTF8   atomic.Uint64 // closed for a text message that is not UTF-8 (1007)
	ProtocolError atomic.Uint64 // closed for an RFC 6455 violation (1002)
	IdleTimeouts  atomic.Uint64 // closed after IdleTimeout without a frame (1001)
	WriteErrors   atomic.Uint64 // dropped because a write failed or timed out
	MessagesOut   atomic.Uint64 // text and binary frames written to clients (control frames not counted)
	PendingLimit  atomic.Uint64 // handshakes refused (503): MaxPendingUpgrades in progress
	SocketLimit   atomic.Uint64 // handshakes refused (503): no free socket slot (Sockets)
}

// WebSocketHandler is the WebSocket transport: an http.Handler mounted at
// <socket-path>/websocket. See the package documentation.
type WebSocketHandler struct {
	ep      Endpoint
	cfg     WebSocketConfig
	log     *slog.Logger
	origins *originChecker
	stats   Stats
	writers *writerPool
	epoch   time.Time    // origin of the reactor's clock
	pending atomic.Int64 // handshakes in ServeHTTP

	// The reactor for event-driven reads (reactor.go), started with the
	// first connection and stopped after the last one or by Close.
	rmu          sync.Mutex
	reactor      *reactor // nil when no connection uses one
	closed       bool
	pollerFailed bool           // a poller could not be made (logged once)
	bg           sync.WaitGroup // the reactors' goroutines
}

// NewWebSocketHandler returns a handler that brings connections to ep. It
// fails only for an AllowedOrigins entry it cannot parse.
func NewWebSocketHandler(ep Endpoint, cfg WebSocketConfig) (*WebSocketHandler, error) {
	if ep == nil {
		return nil, errors.New("transport: NewWebSocketHandler needs an Endpoint")
	}
	positiveOr(&cfg.IdleTimeout, DefaultIdleTimeout)
	positiveOr(&cfg.MaxFrameSize, DefaultMaxFrameSize)
	positiveOr(&cfg.MaxQueue, DefaultMaxQueue)
	positiveOr(&cfg.MaxQueueBytes, DefaultMaxQueueBytes)
	positiveOr(&cfg.WriteTimeout, DefaultWriteTimeout)
	positiveOr(&cfg.CloseTimeout, DefaultCloseTimeout)
	positiveOr(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	if cfg.MaxPendingUpgrades == 0 {
		cfg.MaxPendingUpgrades = DefaultMaxPendingUpgrades
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	oc, err := newOriginChecker(cfg.AllowedOrigins)
	if err != nil {
		return nil, err
	}
	return &WebSocketHandler{ep: ep, cfg: cfg, log: cfg.Logger, origins: oc, writers: newWriterPool(), epoch: time.Now()}, nil
}

// Stats returns the handler's counters.
func (h *WebSocketHandler) Stats() *Stats { return &h.stats }

// Close stops the handler's background goroutines, the poller and the
// idle sweeper of event-driven reads, and waits for them. It does not
// close connections (channels.Endpoint.CloseAll does that, before): a
// connection still open continues with a parked reader, and one upgraded
// after Close gets a parked reader too. A handler whose connections have
// all ended runs no goroutine even without Close. Further calls do
// nothing. The error is always nil.
func (h *WebSocketHandler) Close() error {
	h.rmu.Lock()
	if h.closed {
		h.rmu.Unlock()
		return nil
	}
	h.closed = true
	r := h.reactor
	if r != nil {
		r.stopLocked()
	}
	h.rmu.Unlock()
	if r != nil {
		r.migrate()
	}
	h.bg.Wait()
	return nil
}

// authTokenPrefix marks the subprotocol entry that carries a bearer token
// (PROTOCOL.md §1.4).
const authTokenPrefix = "base64url.bearer.phx."

// phoenixProtocol is the subprotocol phoenix.js offers next to the token.
const phoenixProtocol = "phoenix"

// ServeHTTP performs the handshake in Phoenix's order (PROTOCOL.md §1.3)
// and, once upgraded, hands the connection to the handler's poller (or to
// its own reader goroutine) and returns, so that net/http's connection
// goroutine (and the stack it grew parsing the request) ends.
func (h *WebSocketHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// §1.3 step 1. RFC 6455 §4.1: the opening handshake is a GET.
	if r.Method != http.MethodGet {
		h.refuse(w, r, http.StatusBadRequest, "", "method")
		return
	}
	// Capacity first: a node at a limit sheds the handshake before any
	// work on it (README "Limits").
	if max := h.cfg.MaxPendingUpgrades; max > 0 {
		if h.pending.Add(1) > int64(max) {
			h.pending.Add(-1)
			h.stats.PendingLimit.Add(1)
			h.refuse(w, r, http.StatusServiceUnavailable, "too many pending upgrades", "pending upgrades")
			return
		}
		defer h.pending.Add(-1)
	}
	if !h.cfg.Sockets.acquire() {
		h.stats.SocketLimit.Add(1)
		h.refuse(w, r, http.StatusServiceUnavailable, "too many sockets", "max sockets")
		return
	}
	slot := true // held until the connection takes it (released in end)
	defer func() {
		if slot {
			h.cfg.Sockets.release()
		}
	}()
	// Step 2: origin (RFC 6455 §10.2), 403 with an empty body.
	if !h.origins.allow(originOf(r)) {
		h.refuse(w, r, http.StatusForbidden, "", "origin")
		return
	}

	// Steps 3 and 4: subprotocols (RFC 6455 §4.2.2 item 5.4 /subprotocol/).
	offered := splitHeaderList(r.Header.Values("Sec-Websocket-Protocol"))
	var token string
	var lifted bool
	if h.cfg.AuthToken {
		var ok bool
		token, offered, lifted, ok = liftAuthToken(offered)
		if !ok {
			h.refuse(w, r, http.StatusBadRequest, "", "auth token encoding")
			return
		}
		if lifted {
			// Like Phoenix, connect sees the offer without the token, so
			// the secret does not travel on in Header.
			if len(offered) == 0 {
				r.Header.Del("Sec-Websocket-Protocol")
			} else {
				r.Header.Set("Sec-Websocket-Protocol", strings.Join(offered, ", "))
			}
		}
	}
	protocol, ok := h.selectProtocol(offered, lifted)
	if !ok {
		h.refuse(w, r, http.StatusForbidden, "", "subprotocol")
		return
	}

	// Steps 5 and 6: serializer (§1.2) and the application's connect,
	// before the upgrade, so that a refusal is an ordinary HTTP answer.
	ser, id, ref := connect(r.Context(), h.ep, r, "websocket", token, h.cfg.HandshakeTimeout)
	if ref != nil {
		h.refuse(w, r, ref.status, ref.reason, ref.check)
		return
	}

	// Step 7: the upgrade itself (RFC 6455 §4.2.2). HTTPUpgrader checks
	// the remaining handshake headers and answers 400 (or 426 for a wrong
	// Sec-WebSocket-Version, §4.4) on the hijacked connection itself. The
	// subprotocol is written as a plain header because the bearer entry is
	// standard base64 whose "/" is not an RFC 7230 token character, which
	// HTTPUpgrader.Protocol's parser would reject.
	up := ws.HTTPUpgrader{Timeout: h.cfg.HandshakeTimeout}
	if protocol != "" {
		up.Header = http.Header{"Sec-Websocket-Protocol": {protocol}}
	}
	nc, rw, _, err := up.Upgrade(r, w)
	if err != nil {
		if nc != nil {
			nc.Close()
		}
		h.stats.Refused.Add(1)
		h.log.Debug("transport: websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}

	c := newWSConn(h, nc)
	slot = false
	// net/http's hijacked buffers are dropped here; only bytes a client
	// sent ahead of our 101 answer are kept (copied) for the reader.
	if n := rw.Reader.Buffered(); n > 0 {
		p, _ := rw.Reader.Peek(n)
		pending := append([]byte(nil), p...)
		c.pending = &pending
	}
	if h.eventReads() {
		if fd, ok := connFD(nc); ok {
			if c.r = h.acquireReactor(); c.r != nil {
				c.fd = fd
			}
		}
	}
	h.stats.Accepted.Add(1)
	h.stats.Open.Add(1)
	c.sock = h.ep.Open(c, ser, id)
	c.start()
}

// refuse answers a handshake without upgrading. The body is the reason, as
// plain text, or empty.
func (h *WebSocketHandler) refuse(w http.ResponseWriter, r *http.Request, status int, body, why string) {
	h.stats.Refused.Add(1)
	h.log.Debug("transport: websocket handshake refused", "remote", r.RemoteAddr, "status", status, "check", why)
	if status == http.StatusServiceUnavailable {
		// A draining node (channels.ErrShuttingDown), or one at a limit:
		// try another one, or later.
		w.Header().Set("Retry-After", "5")
	}
	if body != "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
	}
	w.WriteHeader(status)
	if body != "" {
		_, _ = w.Write([]byte(body))
	}
}

// selectProtocol picks the subprotocol to answer with (§1.3 step 4). With
// a configured list, the first configured protocol the client offered
// wins, and an offer with none of them fails. Otherwise, and also when a
// bearer token was lifted from the offer, "phoenix" is echoed if offered:
// a browser fails a handshake whose answer selects none of the offered
// subprotocols (§1.4). No offer means no check and no answer.
func (h *WebSocketHandler) selectProtocol(offered []string, lifted bool) (string, bool) {
	if len(offered) == 0 {
		return "", true
	}
	for _, p := range h.cfg.Subprotocols {
		for _, o := range offered {
			if o == p {
				return p, true
			}
		}
	}
	if len(h.cfg.Subprotocols) == 0 || lifted {
		for _, o := range offered {
			if o == phoenixProtocol {
				return phoenixProtocol, true
			}
		}
	}
	return "", len(h.cfg.Subprotocols) == 0
}

// liftAuthToken takes the bearer token entry out of the offered
// subprotocols and decodes it: standard base64 alphabet, padding optional
// (phoenix.js strips it; the "base64url" in the prefix notwithstanding).
// The URL-safe alphabet is accepted too, as no token can be ambiguous
// between the two. ok is false for an entry that does not decode.
func liftAuthToken(offered []string) (token string, rest []string, lifted, ok bool) {
	for i, p := range offered {
		if !strings.HasPrefix(p, authTokenPrefix) {
			continue
		}
		enc := strings.TrimRight(p[len(authTokenPrefix):], "=")
		b, err := base64.RawStdEncoding.DecodeString(enc)
		if err != nil {
			b, err = base64.RawURLEncoding.DecodeString(enc)
		}
		if err != nil {
			return "", offered, false, false
		}
		rest = make([]string, 0, len(offered)-1)
		rest = append(rest, offered[:i]...)
		rest = append(rest, offered[i+1:]...)
		return string(b), rest, true, true
	}
	return "", offered, false, true
}

// splitHeaderList splits comma-separated header values (RFC 7230 §7
// #rule) into trimmed, non-empty elements.
func splitHeaderList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}
