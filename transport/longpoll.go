package transport

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/channels"
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
	// poll. When full, the OLDEST buffered message is dropped (and
	// counted in LongPollStats.Overflowed) so that the newest state
	// reaches the client; the socket is not closed. Default 1000.
	MaxBuffered int
	// MaxBody bounds a POST body. A larger body is refused whole, none
	// of its lines processed, with HTTP 413 and {"status":413} (which
	// phoenix.js treats as an error: it reconnects); the session stays.
	// Default 1 MiB.
	MaxBody int64
	// MaxSessions bounds the sessions of this handler. A GET that would
	// open one more is answered HTTP 503 with Retry-After and an empty
	// body (phoenix.js reads a body without JSON as an error, closes and
	// reconnects with backoff; Phoenix has no such limit). Default 10000.
	MaxSessions int
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
	// node and brings back its answer (PROTOCOL.md §8.6); see
	// longpoll_relay.go. The handler registers itself on it. nil: a
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
	DefaultLongPollWindow      = 10 * time.Second
	DefaultLongPollMaxBuffered = 1000
	DefaultLongPollMaxBody     = 1 << 20
	DefaultLongPollMaxSessions = 10000
	DefaultLongPollTokenMaxAge = 14 * 24 * time.Hour
)

// LongPollStats are a LongPollHandler's running counters.
type LongPollStats struct {
	Open           atomic.Int64  // sessions opened and not yet ended
	Opened         atomic.Uint64 // sessions created
	Refused        atomic.Uint64 // opening GETs refused (origin, vsn, connect, limit)
	Expired        atomic.Uint64 // sessions ended by SessionTimeout
	BadTokens      atomic.Uint64 // requests with an invalid, expired or dead-session token
	Polls          atomic.Uint64 // GET polls on a live session
	Posts          atomic.Uint64 // POSTs on a live session
	DroppedBinary  atomic.Uint64 // server binary frames dropped (no long-poll encoding, §2.4)
	Overflowed     atomic.Uint64 // buffered messages dropped, oldest first, at MaxBuffered
	BadLines       atomic.Uint64 // POST lines that were neither JSON nor base64
	BodiesTooLarge atomic.Uint64 // POSTs above MaxBody
	Relayed        atomic.Uint64 // requests forwarded to the session's node
	RelayFailures  atomic.Uint64 // forwarded requests the owner did not answer (gone, timeout)
	MessagesOut    atomic.Uint64 // messages handed to clients in poll responses
	SessionLimit   atomic.Uint64 // opening GETs refused (503): MaxSessions reached
	SocketLimit    atomic.Uint64 // opening GETs refused (503): no free socket slot (Sockets)
}

// LongPollHandler is the long-poll transport (PROTOCOL.md §8), an
// http.Handler mounted at <socket-path>/longpoll. A session lives on the
// node that opened it; a request whose token names another node is
// relayed there through LongPollConfig.Relay (§8.6, longpoll_relay.go).
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
// preflight (HTTP 200, empty body, as Phoenix; Allow-Origin reflects an
// allowed Origin). Other methods: 400, empty body.
//
// Every JSON answer is HTTP 200 with the logical status in the body, as
// Phoenix does; exceptions: a body above MaxBody (HTTP 413 with
// {"status":413}), MaxSessions reached or the handler closed (HTTP 503,
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
	stats   LongPollStats

	mu       sync.Mutex
	sessions map[[lpSessionIDLen]byte]*lpSession // guarded by mu
	closed   bool                                // guarded by mu
	done     chan struct{}                       // closed by Close
	bg       sync.WaitGroup                      // HandleClose calls in flight
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
	positiveOr(&cfg.MaxBody, DefaultLongPollMaxBody)
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
		done:     make(chan struct{}),
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
// HandleClose calls. Later GETs get HTTP 503, later POSTs {"status":410}.
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

// ServeHTTP dispatches on the method (§8.1).
func (h *LongPollHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodPost, http.MethodOptions:
	default:
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	originValue, hasOrigin := originOf(r)
	allowed := h.origins.allow(originValue, hasOrigin)
	if r.Method == http.MethodOptions {
		h.preflight(w, r, allowed, originValue)
		return
	}
	h.corsHeaders(w, allowed, hasOrigin, originValue)
	if !allowed {
		// Phoenix checks the origin on every long-poll request.
		if r.Method == http.MethodGet {
			h.stats.Refused.Add(1)
		}
		h.log.Debug("transport: long-poll origin refused", "remote", r.RemoteAddr, "origin", originValue)
		writeStatusJSON(w, http.StatusOK, 403)
		return
	}
	if node, ok := h.owner(r); ok {
		var body []byte
		if r.Method == http.MethodPost {
			if body, ok = h.readBody(w, r); !ok {
				return
			}
		}
		if h.relay(w, r, node, body) {
			return
		}
		// The owner is gone: what a dead session gets here.
		h.stats.BadTokens.Add(1)
		if r.Method == http.MethodPost {
			writeStatusJSON(w, http.StatusOK, 410)
		} else {
			h.open(w, r)
		}
		return
	}
	s := h.lookup(r)
	if r.Method == http.MethodPost {
		if s == nil {
			writeStatusJSON(w, http.StatusOK, 410)
			return
		}
		h.post(w, r, s)
		return
	}
	if s == nil {
		h.open(w, r)
		return
	}
	h.poll(w, r, s)
}

// owner reports the node to relay r to: the one its token names, when
// that is another node and a relay is configured. A request that came
// through the relay is never relayed again.
func (h *LongPollHandler) owner(r *http.Request) (string, bool) {
	if h.cfg.Relay == nil || relayed(r) {
		return "", false
	}
	node, ok := longPollTokenNode(requestToken(r))
	if !ok || node == h.cfg.NodeID {
		return "", false
	}
	return node, true
}

// readBody reads a POST body of at most MaxBody bytes; on failure it has
// answered (413 above the bound, 400 for a body cut short).
func (h *LongPollHandler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.stats.BodiesTooLarge.Add(1)
			writeStatusJSON(w, http.StatusRequestEntityTooLarge, 413)
			return nil, false
		}
		// The client went away mid-body; nothing was processed.
		writeStatusJSON(w, http.StatusBadRequest, 400)
		return nil, false
	}
	return body, true
}

// preflight answers OPTIONS like Phoenix: HTTP 200, empty body, the
// requested headers echoed. A refused origin gets no Allow-Origin (the
// browser then blocks the request).
func (h *LongPollHandler) preflight(w http.ResponseWriter, r *http.Request, allowed bool, origin string) {
	hd := w.Header()
	if allowed {
		if origin != "" {
			hd.Set("Access-Control-Allow-Origin", origin)
			hd.Set("Access-Control-Allow-Credentials", "true")
		} else {
			hd.Set("Access-Control-Allow-Origin", "*")
		}
		if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
			hd.Set("Access-Control-Allow-Headers", rh)
		}
		hd.Set("Access-Control-Allow-Methods", "get, post, options")
		hd.Set("Access-Control-Max-Age", "3600")
	}
	hd.Add("Vary", "Origin")
	hd.Set("Cache-Control", "max-age=0, private, must-revalidate")
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// corsHeaders sets the headers of a JSON answer: Allow-Origin reflects an
// allowed Origin (with credentials, as Phoenix does), "*" without one.
func (h *LongPollHandler) corsHeaders(w http.ResponseWriter, allowed, hasOrigin bool, origin string) {
	hd := w.Header()
	switch {
	case allowed && hasOrigin && origin != "":
		hd.Set("Access-Control-Allow-Origin", origin)
		hd.Set("Access-Control-Allow-Credentials", "true")
		hd.Add("Vary", "Origin")
	case allowed:
		hd.Set("Access-Control-Allow-Origin", "*")
	}
}

// requestToken returns the session token: the X-Phoenix-LongPoll-Token
// header if set, else the last "token" query parameter (§8.2).
func requestToken(r *http.Request) string {
	if v := r.Header.Get("X-Phoenix-Longpoll-Token"); v != "" {
		return v
	}
	vs := r.URL.Query()["token"]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// lookup returns the live session the request's token names, or nil.
func (h *LongPollHandler) lookup(r *http.Request) *lpSession {
	tok := requestToken(r)
	if tok == "" {
		return nil
	}
	t, ok := parseLongPollToken(h.secret, tok)
	if !ok || t.NodeID != h.cfg.NodeID || time.Since(t.Issued) > h.cfg.TokenMaxAge {
		h.stats.BadTokens.Add(1)
		return nil
	}
	h.mu.Lock()
	s := h.sessions[t.Session]
	h.mu.Unlock()
	if s == nil {
		h.stats.BadTokens.Add(1)
	}
	return s
}

// open runs the handshake (§1.2, §5.1) and creates a session, answering
// {"status":410,"token":T,"messages":[]}.
func (h *LongPollHandler) open(w http.ResponseWriter, r *http.Request) {
	if closed, full := h.room(); closed || full {
		if full {
			h.stats.SessionLimit.Add(1)
		}
		h.refuseOpen(w)
		return
	}
	if !h.cfg.Sockets.acquire() {
		h.stats.SocketLimit.Add(1)
		h.refuseOpen(w)
		return
	}
	slot := true // held until the session is in the table (released in end)
	defer func() {
		if slot {
			h.cfg.Sockets.release()
		}
	}()
	ser, id, ref := connect(r.Context(), h.ep, r, "longpoll", r.Header.Get("X-Phoenix-Authtoken"), h.cfg.HandshakeTimeout)
	if ref != nil {
		// Phoenix answers a refused long-poll connect with 403 in the
		// body; a *ConnectError may choose another status (e.g. 429).
		h.stats.Refused.Add(1)
		h.log.Debug("transport: long-poll connect refused", "remote", r.RemoteAddr, "check", ref.check, "err", ref.err)
		if errors.Is(ref.err, channels.ErrShuttingDown) {
			// A draining node: an HTTP error makes phoenix.js close and
			// reconnect (through the load balancer, to another node),
			// where {"status":503} would make its GET handler throw.
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		writeStatusJSON(w, http.StatusOK, ref.status)
		return
	}

	s := &lpSession{h: h, lastGet: time.Now()}
	if _, err := rand.Read(s.id[:]); err != nil {
		h.log.Error("transport: long-poll session id", "err", err)
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	h.mu.Lock()
	if h.closed || len(h.sessions) >= h.cfg.MaxSessions {
		full := !h.closed
		h.mu.Unlock()
		if full {
			h.stats.SessionLimit.Add(1)
		}
		h.refuseOpen(w)
		return
	}
	h.sessions[s.id] = s
	slot = false
	// Close waits for this Open (and the HandleClose it may start).
	h.bg.Add(1)
	h.mu.Unlock()
	defer h.bg.Done()
	h.stats.Opened.Add(1)
	h.stats.Open.Add(1)

	sock := h.ep.Open(s, ser, id)
	s.mu.Lock()
	s.sock = sock
	ended := s.ended
	if !ended {
		s.timer = time.AfterFunc(h.cfg.SessionTimeout, s.expire)
	}
	s.mu.Unlock()
	if ended {
		// Closed during Open (endpoint shutting down): end() could not
		// reach the socket, so HandleClose is ours to start.
		s.startHandleClose()
		writeStatusJSON(w, http.StatusOK, 410)
		return
	}
	writePollJSON(w, 410, h.token(s), nil)
}

// room reports whether the handler is closed, or at MaxSessions.
func (h *LongPollHandler) room() (closed, full bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed, len(h.sessions) >= h.cfg.MaxSessions
}

// refuseOpen answers an opening GET the node has no room for (or a closed
// handler's): HTTP 503, Retry-After, empty body. phoenix.js reads a body
// without JSON as an error, closes and reconnects with backoff.
func (h *LongPollHandler) refuseOpen(w http.ResponseWriter) {
	h.stats.Refused.Add(1)
	w.Header().Set("Retry-After", "5")
	w.WriteHeader(http.StatusServiceUnavailable)
}

func (h *LongPollHandler) token(s *lpSession) string {
	return signLongPollToken(h.secret, lpToken{NodeID: h.cfg.NodeID, Session: s.id, Issued: time.Now()})
}

// poll is a GET on a live session: answer at once with what is buffered,
// else wait up to Window for a message. One poll waits per session: a new
// GET replaces the waiting one, which answers {"status":204} at once.
// (Phoenix's owner only remembers the latest poll, and the replaced one
// runs out its window and answers 204; answering it now frees its
// goroutine sooner. Messages always go to the latest poll.)
func (h *LongPollHandler) poll(w http.ResponseWriter, r *http.Request, s *lpSession) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		h.stats.BadTokens.Add(1)
		h.open(w, r)
		return
	}
	h.stats.Polls.Add(1)
	s.lastGet = time.Now()
	if len(s.buf) > 0 {
		msgs := s.takeLocked()
		s.mu.Unlock()
		writePollJSON(w, 200, h.token(s), msgs)
		return
	}
	if old := s.waiter; old != nil {
		old.replaced = true
		old.wake()
	}
	wt := &lpWaiter{ch: make(chan struct{}, 1)}
	s.waiter = wt
	s.mu.Unlock()

	timer := time.NewTimer(h.cfg.Window)
	gone := false
	select {
	case <-wt.ch:
	case <-timer.C:
	case <-h.done:
	case <-r.Context().Done():
		gone = true
	}
	timer.Stop()

	s.mu.Lock()
	if s.waiter == wt {
		s.waiter = nil
	}
	switch {
	case gone:
		// The client left: keep the messages for its next poll.
		s.mu.Unlock()
		return
	case s.ended:
		s.mu.Unlock()
		writeStatusJSON(w, http.StatusOK, 410)
		return
	case wt.replaced || len(s.buf) == 0:
		s.mu.Unlock()
		writePollJSON(w, 204, h.token(s), nil)
		return
	}
	msgs := s.takeLocked()
	s.mu.Unlock()
	writePollJSON(w, 200, h.token(s), msgs)
}

// post hands each line of the body to the socket, in order (§8.3), and
// answers {"status":200}; replies come back on GET polls.
func (h *LongPollHandler) post(w http.ResponseWriter, r *http.Request, s *lpSession) {
	body, ok := h.readBody(w, r)
	if !ok {
		return
	}
	h.stats.Posts.Add(1)
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	ndjson := mt == "application/x-ndjson"

	// One POST at a time per session: the socket takes frames from one
	// goroutine at a time, in order. HandleClose takes the same lock, so it
	// never overlaps a POST.
	s.frameMu.Lock()
	defer s.frameMu.Unlock()
	if !ndjson {
		// Older clients: the whole body is one text frame.
		sock := s.live()
		if sock == nil {
			writeStatusJSON(w, http.StatusOK, 410)
			return
		}
		if len(body) > 0 {
			sock.HandleFrame(body, false)
		}
		writeStatusJSON(w, http.StatusOK, 200)
		return
	}
	ended := false
	splitLongPollBody(body, func(line []byte, binary, ok bool) bool {
		sock := s.live()
		if sock == nil {
			// The session ended mid-body (a frame made the server close
			// it): the rest is not processed.
			ended = true
			return false
		}
		if !ok {
			h.stats.BadLines.Add(1)
			h.log.Debug("transport: long-poll line is neither JSON nor base64; dropped", "remote", r.RemoteAddr)
			return true
		}
		sock.HandleFrame(line, binary)
		return true
	})
	if ended {
		writeStatusJSON(w, http.StatusOK, 410)
		return
	}
	writeStatusJSON(w, http.StatusOK, 200)
}

// splitLongPollBody splits an ndjson POST body into frames (§8.3) and
// calls yield with each, in order, until yield returns false. A line that
// begins with "[" or "{" is a JSON text frame (a V2 array, or a V1 object,
// accepted though phoenix.js never sends one over long-poll), handed as
// is; anything else is standard base64 of a binary frame, padded as
// phoenix.js sends it (btoa) or unpadded, handed decoded with binary set.
// A trailing \r is dropped and empty lines are skipped (Phoenix crashes
// the session on one; skipping is the SHOULD). A line that is not base64
// is yielded with ok false and line nil. line is only valid during yield:
// decoded frames share one buffer.
func splitLongPollBody(body []byte, yield func(line []byte, binary, ok bool) bool) {
	var dec []byte
	for len(body) > 0 {
		var line []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			line, body = body, nil
		}
		// CRLF line ends; further CRs before it are JSON whitespace.
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			continue
		}
		if line[0] == '[' || line[0] == '{' {
			if !yield(line, false, true) {
				return
			}
			continue
		}
		// Room for either decoding: unpadded input decodes to more than
		// StdEncoding.DecodedLen promises (FuzzLongPollBody found it).
		if n := base64.RawStdEncoding.DecodedLen(len(line)); cap(dec) < n {
			dec = make([]byte, n)
		}
		dec = dec[:cap(dec)]
		m, err := base64.StdEncoding.Decode(dec, line)
		if err != nil {
			m, err = base64.RawStdEncoding.Decode(dec, line)
		}
		var cont bool
		if err != nil {
			cont = yield(nil, false, false)
		} else {
			cont = yield(dec[:m], true, true)
		}
		if !cont {
			return
		}
	}
}

// ---------------------------------------------------------------------
// Sessions.

// lpSession is one long-poll session: the socket's Conn, an outbound
// buffer of encoded text frames and at most one waiting poll. Its expiry
// is one time.AfterFunc timer, re-armed (not reset) when it fires early.
type lpSession struct {
	h  *LongPollHandler
	id [lpSessionIDLen]byte

	// frameMu serialises HandleFrame (POSTs) and HandleClose.
	frameMu sync.Mutex

	mu      sync.Mutex
	sock    Socket // set once Open returns; guarded by mu
	buf     [][]byte
	waiter  *lpWaiter
	lastGet time.Time
	timer   *time.Timer
	ended   bool
	closing bool // HandleClose started
}

// lpWaiter is one waiting GET.
type lpWaiter struct {
	ch       chan struct{} // capacity 1
	replaced bool          // guarded by the session's mu
}

func (w *lpWaiter) wake() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// Send implements channels.Conn: it buffers f for the next poll and never
// blocks. Binary frames have no long-poll encoding (§2.4): they are
// dropped and counted, and the socket carries on.
func (s *lpSession) Send(f channels.Frame) error {
	if f.Binary {
		s.h.stats.DroppedBinary.Add(1)
		s.h.log.Debug("transport: binary frame dropped for a long-poll session")
		s.mu.Lock()
		ended := s.ended
		s.mu.Unlock()
		if ended {
			return channels.ErrConnClosed
		}
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return channels.ErrConnClosed
	}
	if len(s.buf) >= s.h.cfg.MaxBuffered {
		// Oldest first. Reslicing moves the start; append copies the
		// live part when it grows the array, so memory stays bounded.
		s.buf[0] = nil
		s.buf = s.buf[1:]
		s.h.stats.Overflowed.Add(1)
	}
	s.buf = append(s.buf, f.Data)
	if s.waiter != nil {
		s.waiter.wake()
	}
	return nil
}

// Close implements channels.Conn: the session ends (later requests get
// 410) and the socket gets HandleClose. Long-poll has no close frame; the
// code is only logged.
func (s *lpSession) Close(code int, reason string) {
	s.h.log.Debug("transport: long-poll session closed by the server", "code", code, "reason", reason)
	s.end("closed: " + strconv.Itoa(code))
}

// takeLocked returns the buffered messages and empties the buffer.
func (s *lpSession) takeLocked() [][]byte {
	msgs := s.buf
	s.buf = nil
	s.h.stats.MessagesOut.Add(uint64(len(msgs)))
	return msgs
}

// live returns the socket of a session that has not ended, else nil.
func (s *lpSession) live() Socket {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil
	}
	return s.sock
}

// expire is the session timer's function.
func (s *lpSession) expire() {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	timeout := s.h.cfg.SessionTimeout
	if s.waiter != nil {
		s.timer.Reset(timeout)
		s.mu.Unlock()
		return
	}
	if left := timeout - time.Since(s.lastGet); left > 0 {
		s.timer.Reset(left)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.h.stats.Expired.Add(1)
	s.end("session timeout")
}

// end ends the session once: it leaves the table, its poll is woken, its
// buffer dropped, and HandleClose runs in a goroutine of its own (Close
// may be called with the socket's locks held, which HandleClose takes).
func (s *lpSession) end(why string) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	s.buf = nil
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.waiter != nil {
		s.waiter.wake()
	}
	hasSock := s.sock != nil
	s.mu.Unlock()

	h := s.h
	h.mu.Lock()
	if h.sessions[s.id] == s {
		delete(h.sessions, s.id)
	}
	h.mu.Unlock()
	h.stats.Open.Add(-1)
	h.cfg.Sockets.release()
	h.log.Debug("transport: long-poll session ended", "why", why)
	if hasSock {
		s.startHandleClose()
	}
}

// startHandleClose calls the socket's HandleClose, exactly once, after
// any POST in progress.
func (s *lpSession) startHandleClose() {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing = true
	sock := s.sock
	s.mu.Unlock()
	s.h.bg.Add(1)
	go func() {
		defer s.h.bg.Done()
		s.frameMu.Lock()
		defer s.frameMu.Unlock()
		sock.HandleClose()
	}()
}

// ---------------------------------------------------------------------
// Answers.

func jsonHeaders(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Type", "application/json; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
}

// writeStatusJSON answers {"status":N} with HTTP code httpStatus.
func writeStatusJSON(w http.ResponseWriter, httpStatus, status int) {
	jsonHeaders(w)
	w.WriteHeader(httpStatus)
	_, _ = w.Write([]byte(`{"status":` + strconv.Itoa(status) + `}`))
}

// writePollJSON answers {"status":N,"token":T,"messages":[...]}, each
// message an encoded text frame as a JSON string.
func writePollJSON(w http.ResponseWriter, status int, token string, msgs [][]byte) {
	n := 64 + len(token)
	for _, m := range msgs {
		n += len(m) + len(m)/4 + 3
	}
	b := make([]byte, 0, n)
	b = append(b, `{"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"token":`...)
	b = appendJSONString(b, token)
	b = append(b, `,"messages":[`...)
	for i, m := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, string(m))
	}
	b = append(b, "]}"...)
	jsonHeaders(w)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// appendJSONString appends s as a JSON string. encoding/json never fails
// on a string (invalid UTF-8 becomes U+FFFD), so a poll never fails.
func appendJSONString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return append(b, strings.TrimSuffix(buf.String(), "\n")...)
}
