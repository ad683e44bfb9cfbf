package transport

import (
	"crypto/rand"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// LongPollConfig configures a LongPollHandler. The zero value is usable:
// every zero field takes the default named in its comment.
type LongPollConfig struct {
	// Window is how long a GET poll waits for a message before it answers
	// {"status":204}. Default 10 s, Phoenix's (PROTOCOL.md §8.1).
	Window time.Duration
	// SessionTimeout ends a session that has received no GET for this
	// long (counted from the start of the last poll, or from the opening
	// GET). POSTs do not count (§8.5). A session is never ended while a
	// poll is waiting on it. Default 1.5 × Window (15 s). Phoenix checks
	// on a 15 s ticker, so its sessions die 15 to 30 s after the last
	// GET; here one timer per session ends it at SessionTimeout.
	SessionTimeout time.Duration
	// MaxBuffered is how many messages a session buffers for its next
	// poll, and MaxBufferedBytes what they may take in a poll answer
	// (their JSON-string encoding). A message that would exceed either
	// ends the session as a slow consumer, as a full WebSocket queue
	// closes its connection: Send returns channels.ErrSlowConsumer (the
	// endpoint counts it), the buffer is freed, and the client's next
	// request gets {"status":410}, on which phoenix.js reconnects and
	// rejoins. Nothing is dropped without the client learning of it. A
	// message alone in the buffer may exceed MaxBufferedBytes. Defaults
	// 1000 and 4 MiB, WebSocket's queue bounds.
	MaxBuffered      int
	MaxBufferedBytes int
	// MaxAnswerBytes bounds a poll answer: it carries the oldest buffered
	// messages that fit, the rest stays buffered for the next poll (a
	// message larger than the bound goes alone). At most (and by default)
	// 4 MiB less room for the relay's framing, so that a relayed answer
	// stays well under what Redis accepts in one message.
	MaxAnswerBytes int
	// IOTimeout bounds reading a POST body and writing an answer: a
	// client that trickles its body gets 400, nothing processed; one that
	// does not read its answer is cut off, and when the answer carried
	// messages the session ends (they are lost, and the client learns it
	// by {"status":410}). Default 10 s.
	IOTimeout time.Duration
	// MaxBody bounds a POST body. A larger body is refused whole, none
	// of its lines processed, with HTTP 413 and {"status":413} (which
	// phoenix.js treats as an error: it reconnects); the session stays.
	// Default 1 MiB.
	MaxBody int64
	// MaxBodyBuffers bounds the bytes of POST bodies the handler holds at
	// once, read or being read, from the moment they are reserved until
	// the POST is answered (concurrent POSTs to one session each hold
	// theirs while they wait their turn). A body is reserved whole before
	// a byte of it is read when it has a Content-Length, else as it is
	// read. A POST that does not fit is answered HTTP 503 with
	// Retry-After and {"status":503} before its body is read (mid-body
	// for one without Content-Length) and before its session is touched:
	// phoenix.js treats it as an error and reconnects, and nothing the
	// session held is lost. The forwarding node of a relayed POST holds
	// the body too, and charges it here as well. A body alone may exceed
	// the bound. Default 64 MiB; negative: no limit.
	MaxBodyBuffers int64
	// MaxSessions bounds the sessions of this handler. A GET that would
	// open one more is answered HTTP 503 with Retry-After and an empty
	// body (phoenix.js reads a body without JSON as an error, closes and
	// reconnects with backoff; Phoenix has no such limit). Default 10000.
	MaxSessions int
	// MaxSessionsPerAddr bounds the live sessions opened from one client
	// address (IPv6 addresses count by /64), so that one client cannot
	// take every session of the node. A GET that would open one more
	// gets MaxSessions' answer (HTTP 503, Retry-After). Default 100.
	MaxSessionsPerAddr int
	// TrustedProxies lists the networks (CIDRs, or single addresses) of
	// the proxies in front of the node. A request from one of them is
	// counted against the right-most X-Forwarded-For address that is not
	// itself in the list; requests from anywhere else count against their
	// peer address, and the header is ignored. Empty: never trust it.
	TrustedProxies []string
	// AllowedOrigins lists the origins (scheme://host[:port]) browsers may
	// connect from, as in WebSocketConfig. Empty or "*" allows every
	// origin; a request without Origin is always allowed. Refused:
	// {"status":403} (§5.4).
	AllowedOrigins []string
	// Secret is the HMAC-SHA256 key of the session tokens. Empty: a
	// random key per handler, which is enough: only the node that issued
	// a token verifies it (other nodes relay the request there).
	Secret []byte
	// NodeID is written into every token (at most 255 bytes): it names
	// the node that owns the session.
	NodeID string
	// Relay carries a request whose token names another node to that
	// node and brings back its answer (PROTOCOL.md §8.6). The handler
	// registers itself on it. nil: a
	// token naming another node counts as invalid (a single node).
	Relay pubsub.Caller
	// TokenMaxAge refuses tokens issued longer ago. Every GET answer
	// carries a freshly issued token. Default 14 days, Phoenix's.
	TokenMaxAge time.Duration
	// HandshakeTimeout bounds the connect callback. Default 10 s.
	HandshakeTimeout time.Duration
	// Sockets, if set, bounds the sockets of the node (shared with the
	// WebSocket handler): each session holds a slot, and an opening GET
	// that finds none free gets the answer of MaxSessions (HTTP 503,
	// Retry-After).
	Sockets *Slots
	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Defaults of LongPollConfig.
const (
	DefaultLongPollWindow             = 10 * time.Second
	DefaultLongPollMaxBuffered        = 1000
	DefaultLongPollMaxBufferedBytes   = 4 << 20
	DefaultLongPollMaxAnswerBytes     = 3<<20 - 64<<10 // what one relayed answer carries
	DefaultLongPollMaxSessionsPerAddr = 100
	DefaultLongPollIOTimeout          = 10 * time.Second
	DefaultLongPollMaxBody            = 1 << 20
	DefaultLongPollMaxBodyBuffers     = 64 << 20
	DefaultLongPollMaxSessions        = 10000
	DefaultLongPollTokenMaxAge        = 14 * 24 * time.Hour
)

// LongPollStats are a LongPollHandler's running counters.
type LongPollStats struct {
	Open            atomic.Int64  // sessions opened and not yet ended
	Opened          atomic.Uint64 // sessions created
	Refused         atomic.Uint64 // opening GETs refused (origin, vsn, connect, limit)
	Expired         atomic.Uint64 // sessions ended by SessionTimeout
	BadTokens       atomic.Uint64 // requests with an invalid, expired or dead-session token
	Polls           atomic.Uint64 // GET polls on a live session
	Posts           atomic.Uint64 // POSTs on a live session
	DroppedBinary   atomic.Uint64 // server binary frames dropped (no long-poll encoding, §2.4)
	Overflowed      atomic.Uint64 // sessions ended as slow consumers at MaxBuffered messages
	OverflowedBytes atomic.Uint64 // sessions ended as slow consumers at MaxBufferedBytes
	AnswerFailures  atomic.Uint64 // poll answers with messages that could not be written (the session ended)
	IOTimeouts      atomic.Uint64 // POST bodies and answers cut off at IOTimeout
	Panics          atomic.Uint64 // panics recovered: serving a relayed request (answered 500), HandleClose
	RelayTooLarge   atomic.Uint64 // relayed requests, or answers, above the relay's bound (413, or the session ended)
	BadLines        atomic.Uint64 // POST lines that were neither JSON nor base64
	BodiesTooLarge  atomic.Uint64 // POSTs above MaxBody
	Relayed         atomic.Uint64 // requests forwarded to the session's node
	RelayFailures   atomic.Uint64 // forwarded requests the owner did not answer (gone, timeout)
	MessagesOut     atomic.Uint64 // messages handed to clients in poll responses
	SessionLimit    atomic.Uint64 // opening GETs refused (503): MaxSessions reached
	SocketLimit     atomic.Uint64 // opening GETs refused (503): no free socket slot (Sockets)
	AddrLimit       atomic.Uint64 // opening GETs refused (503): MaxSessionsPerAddr reached
	BodyBuffers     atomic.Int64  // bytes of POST bodies held now (MaxBodyBuffers)
	BodyBuffersFull atomic.Uint64 // POSTs refused (503): MaxBodyBuffers reached
}

// LongPollHandler is the long-poll transport (PROTOCOL.md §8), an
// http.Handler mounted at <socket-path>/longpoll. A session lives on the
// node that opened it; a request whose token names another node is
// relayed there through LongPollConfig.Relay (§8.6).
//
// Requests. GET without a valid token runs the handshake in Phoenix's
// order (origin, vsn through channels.Negotiate, Endpoint.Connect with
// Transport "longpoll" and AuthToken from X-Phoenix-AuthToken), opens a
// session (Endpoint.Open with the session as its channels.Conn) and
// answers {"status":410,"token":T,"messages":[]}; a refusal answers
// {"status":403} (or a *channels.ConnectError's status). A GET whose
// token is invalid, expired or names a dead session does the same, with
// a new token. GET with a valid token answers at once with what is
// buffered ({"status":200,...}), else waits up to Window in the request's
// own goroutine and answers 200 as soon as a message arrives or 204 after
// the window. POST with a valid token hands each ndjson line to
// Socket.HandleFrame in order ("[" or "{": a JSON text frame; anything
// else: standard base64 of a binary frame; empty lines and \r are
// skipped; a line that is neither is dropped and counted) and answers
// {"status":200}; replies come back on GETs. POST without a valid session
// answers {"status":410}. The token is the X-Phoenix-LongPoll-Token header
// if present, else the last "token" query parameter. OPTIONS is the CORS
// preflight (HTTP 200, empty body, as Phoenix). Allow-Origin reflects an
// Origin that AllowedOrigins names, with credentials; any other allowed
// request gets "*" without. Other methods: 400, empty body.
//
// Every JSON answer is HTTP 200 with the logical status in the body, as
// Phoenix does; exceptions: a body above MaxBody (HTTP 413 with
// {"status":413}), MaxBodyBuffers reached (HTTP 503 with {"status":503}),
// MaxSessions reached or the handler closed (HTTP 503,
// empty body). Phoenix's {"status":408} (a POST line not acknowledged
// within the window) does not occur: lines are handled synchronously.
//
// Sessions. A session holds the socket, a buffer of encoded text frames
// (at most MaxBuffered, oldest dropped first) and at most one waiting
// poll; a second GET makes the waiting one answer 204 at once. Server
// binary frames are dropped and counted (§2.4), never failing a poll. A
// session ends after SessionTimeout without a GET (one time.AfterFunc
// timer per session, no goroutine), on Conn.Close (disconnect by id,
// shutdown, slow consumer...) or on Close of the handler: it leaves the
// table, a waiting poll answers {"status":410}, and Socket.HandleClose runs
// exactly once, in a short goroutine of its own after any POST in
// progress (Conn.Close may be called with the socket's locks held). POSTs
// of one session are serialised.
type LongPollHandler struct {
	ep      Endpoint
	cfg     LongPollConfig
	log     *slog.Logger
	origins *originChecker
	secret  []byte
	proxies []netip.Prefix // TrustedProxies
	stats   LongPollStats

	// The largest relayed request or answer, and answer body, that
	// cfg.Relay carries in one message (relayBounds).
	relayMax, relayAnswer int

	mu       sync.Mutex
	sessions map[[lpSessionIDLen]byte]*lpSession // guarded by mu
	perAddr  map[netip.Prefix]int                // live sessions per client address; guarded by mu
	closed   bool                                // guarded by mu
	done     chan struct{}                       // closed by Close
	bg       sync.WaitGroup                      // sessions whose HandleClose has not returned (Add under mu while !closed)
}

// NewLongPollHandler returns a handler that brings long-poll sessions to
// ep. It fails for an AllowedOrigins entry it cannot parse, a NodeID
// above 255 bytes, or when no random secret can be made.
func NewLongPollHandler(ep Endpoint, cfg LongPollConfig) (*LongPollHandler, error) {
	if ep == nil {
		return nil, errors.New("transport: NewLongPollHandler needs an Endpoint")
	}
	if len(cfg.NodeID) > lpMaxNodeIDLen {
		return nil, errors.New("transport: long-poll NodeID longer than 255 bytes")
	}
	positiveOr(&cfg.Window, DefaultLongPollWindow)
	positiveOr(&cfg.SessionTimeout, cfg.Window*3/2)
	positiveOr(&cfg.MaxBuffered, DefaultLongPollMaxBuffered)
	positiveOr(&cfg.MaxBufferedBytes, DefaultLongPollMaxBufferedBytes)
	positiveOr(&cfg.MaxAnswerBytes, DefaultLongPollMaxAnswerBytes)
	// Any session may be polled through the relay: its answers must fit
	// in one of the Caller's messages.
	relayMax, relayAnswer := relayBounds(cfg.Relay)
	cfg.MaxAnswerBytes = min(cfg.MaxAnswerBytes, relayAnswer)
	positiveOr(&cfg.IOTimeout, DefaultLongPollIOTimeout)
	positiveOr(&cfg.MaxBody, DefaultLongPollMaxBody)
	if cfg.MaxBodyBuffers == 0 {
		cfg.MaxBodyBuffers = DefaultLongPollMaxBodyBuffers
	}
	positiveOr(&cfg.MaxSessionsPerAddr, DefaultLongPollMaxSessionsPerAddr)
	positiveOr(&cfg.MaxSessions, DefaultLongPollMaxSessions)
	positiveOr(&cfg.TokenMaxAge, DefaultLongPollTokenMaxAge)
	positiveOr(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	oc, err := newOriginChecker(cfg.AllowedOrigins)
	if err != nil {
		return nil, err
	}
	proxies, err := parseTrustedProxies(cfg.TrustedProxies)
	if err != nil {
		return nil, err
	}
	secret := append([]byte(nil), cfg.Secret...)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, errors.New("transport: long-poll secret: " + err.Error())
		}
	}
	h := &LongPollHandler{
		ep:       ep,
		cfg:      cfg,
		log:      cfg.Logger,
		origins:  oc,
		secret:   secret,
		sessions: make(map[[lpSessionIDLen]byte]*lpSession),
		perAddr:  make(map[netip.Prefix]int),
		proxies:  proxies,
		done:     make(chan struct{}),

		relayMax:    relayMax,
		relayAnswer: relayAnswer,
	}
	if cfg.Relay != nil {
		cfg.Relay.HandleCalls(relayService, h.serveRelayed)
	}
	return h, nil
}

// Stats returns the handler's counters.
func (h *LongPollHandler) Stats() *LongPollStats { return &h.stats }

// Sessions returns the number of live sessions.
func (h *LongPollHandler) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// Close ends every session (each socket gets HandleClose, once), wakes
// every waiting poll (it answers {"status":410}) and waits for those
// HandleClose calls, and for those of sessions that ended just before or
// meanwhile (their timer, Conn.Close): none runs after Close returns. Later GETs get HTTP 503, later POSTs {"status":410}.
// Further calls do nothing. The error is always nil.
func (h *LongPollHandler) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		h.bg.Wait()
		return nil
	}
	h.closed = true
	list := make([]*lpSession, 0, len(h.sessions))
	for _, s := range h.sessions {
		list = append(list, s)
	}
	h.mu.Unlock()
	for _, s := range list {
		s.end("handler closed")
	}
	close(h.done)
	h.bg.Wait()
	return nil
}
