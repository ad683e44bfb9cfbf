package transport

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
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
	// MessageTimeout is how long a message that does not arrive whole in
	// its first read may take, from its first frame to its last: a socket
	// still short of the end of a message then is closed with 1008
	// "message timeout". Control frames in between do not extend it, so a
	// client cannot hold a half-sent message, and its buffer, for as long
	// as it keeps pinging. Default 30 s: a MaxFrameSize message of 1 MiB
	// arrives in time at 35 KB/s.
	MessageTimeout time.Duration
	// MaxMessageBuffers bounds the bytes that all the handler's sockets
	// hold at once in buffers of messages in progress (fragmented, or
	// larger than the read buffer). A socket whose message needs more
	// when the bound is reached takes it back from the sockets with the
	// oldest messages in progress, which are closed with 1013 "message
	// buffers full" (they may try again later); it is closed so itself
	// only when the messages older than its own do not hold enough.
	// Default 64 MiB; negative: no bound.
	MaxMessageBuffers int64
	// AllowedOrigins lists the origins (scheme://host[:port]) browsers may
	// connect from. Empty or "*" allows every origin. A request without an
	// Origin header is always allowed (PROTOCOL.md §5.4).
	AllowedOrigins []string
	// AuthToken accepts the bearer token that phoenix.js 1.8 sends in the
	// Sec-WebSocket-Protocol header (PROTOCOL.md §1.4).
	AuthToken bool
	// Subprotocols, if set, are the subprotocols the server speaks, in
	// order of preference (PROTOCOL.md §1.3 step 6). A client that offers
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
	// MaxURLLength bounds the request target (path and query) of an
	// upgrade: a longer one is answered HTTP 414 with the body "request
	// target too long", before the connect callback sees its parameters
	// (a user name of a megabyte would become a presence key). Default
	// 16 KiB, room for a token of 8 KiB in the query; negative: no bound
	// but the HTTP server's header limit.
	MaxURLLength int
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
	DefaultMessageTimeout     = 30 * time.Second
	DefaultMaxMessageBuffers  = 64 << 20
	DefaultMaxURLLength       = 16 << 10
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
	// MessageTimeouts counts sockets closed (1008) for a message not
	// whole within MessageTimeout of its first frame.
	MessageTimeouts atomic.Uint64
	// MessageBuffersFull counts sockets closed (1013) for the budget of
	// MaxMessageBuffers: those whose message would have taken
	// MessageBuffers past it with no older message to take back from,
	// and those holding the oldest messages, closed to make room.
	MessageBuffersFull atomic.Uint64
	// MessageBuffers is the bytes held now in buffers of messages in
	// progress.
	MessageBuffers atomic.Int64
	// URLTooLong counts handshakes refused (414) for a request target
	// above MaxURLLength.
	URLTooLong atomic.Uint64
	// Detached counts connections that let go of their net.Conn (or
	// file) to wait in the reactor on a bare descriptor, Attached those
	// that took one back to wait for the rest of a frame, a write or
	// the close (wsconn_fd.go). Every connection detaches once when it
	// first waits; Attached is the price of the saving.
	Detached atomic.Uint64
	Attached atomic.Uint64
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
	budget  msgBudget    // messages in progress against MaxMessageBuffers
	// backlogs are the connections' waits for their queue to drain
	// (backlog.go).
	backlogs backlogWaits

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
	positiveOr(&cfg.MessageTimeout, DefaultMessageTimeout)
	if cfg.MaxURLLength == 0 {
		cfg.MaxURLLength = DefaultMaxURLLength
	}
	if cfg.MaxMessageBuffers == 0 {
		cfg.MaxMessageBuffers = DefaultMaxMessageBuffers
	}
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
// close connections (channels.Runtime.CloseAll does that, before): a
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
