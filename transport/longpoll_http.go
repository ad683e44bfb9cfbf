package transport

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"mime"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// HTTP handling: dispatch, opening a session, polls and POSTs.

// ServeHTTP dispatches on the method (§8.1).
func (h *LongPollHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == relayUndelivered && relayed(r) {
		h.undelivered(w, r)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodPost, http.MethodOptions:
	default:
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	originValue, hasOrigin := originOf(r)
	allowed := h.origins.allow(originValue, hasOrigin)
	if r.Method == http.MethodOptions {
		h.preflight(w, r, allowed, hasOrigin, originValue)
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
			var held int64
			if body, held, ok = h.readBody(w, r); !ok {
				return
			}
			// Held until the owner's answer is relayed back.
			defer h.releaseBody(held)
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
	addr := h.clientKey(r)
	h.mu.Lock()
	closed, limit := h.roomLocked(addr)
	h.mu.Unlock()
	if closed || limit != nil {
		if limit != nil {
			limit.Add(1)
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
	ser, id, ref := connect(r.Context(), h.log, h.ep, r, "longpoll", r.Header.Get("X-Phoenix-Authtoken"), h.cfg.HandshakeTimeout)
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
	s.addr = addr
	h.mu.Lock()
	if closed, limit := h.roomLocked(addr); closed || limit != nil {
		h.mu.Unlock()
		if limit != nil {
			limit.Add(1)
		}
		h.refuseOpen(w)
		return
	}
	h.sessions[s.id] = s
	h.perAddr[addr]++
	slot = false
	// Close waits for the session until its HandleClose has returned
	// (startHandleClose's goroutine ends the count). Taken here, under
	// mu and only while the handler is open, because Close's Wait must
	// never meet an Add from zero: a session its timer ends while Close
	// runs would otherwise start counting after Close stopped waiting.
	h.bg.Add(1)
	h.mu.Unlock()
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
	_ = writePollJSON(w, 410, h.token(s), nil, h.cfg.IOTimeout)
}

// roomLocked reports whether the handler is closed, or else the counter
// of the limit an opening GET from addr hits (nil: there is room). h.mu
// is held.
func (h *LongPollHandler) roomLocked(addr netip.Prefix) (closed bool, limit *atomic.Uint64) {
	switch {
	case h.closed:
		return true, nil
	case len(h.sessions) >= h.cfg.MaxSessions:
		return false, &h.stats.SessionLimit
	case h.perAddr[addr] >= h.cfg.MaxSessionsPerAddr:
		return false, &h.stats.AddrLimit
	}
	return false, nil
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
	if len(s.buf) > 0 && s.holds == 0 {
		h.answerBuffered(w, r, s) // unlocks s.mu
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
		_ = writePollJSON(w, 204, h.token(s), nil, h.cfg.IOTimeout)
		return
	}
	h.answerBuffered(w, r, s)
}

// answerBuffered answers a poll with the buffered messages that fit in
// MaxAnswerBytes (the rest waits for the next poll). It is called with
// s.mu held and a non-empty buffer, and unlocks it. The messages are out
// of the buffer once taken: when the answer cannot be written (the
// client went away, or did not read it within IOTimeout), they are lost,
// and the session ends so that the client learns it ({"status":410} on
// its next request: phoenix.js rejoins) rather than silently missing
// them.
func (h *LongPollHandler) answerBuffered(w http.ResponseWriter, r *http.Request, s *lpSession) {
	tok := h.token(s)
	budget := h.cfg.MaxAnswerBytes - pollAnswerOverhead - len(tok)
	if relayed(r) && s.buf[0].n > h.relayAnswer-pollAnswerOverhead-len(tok) {
		// Not even alone can this message cross the relay: ending the
		// session is the client's only way to learn of it.
		s.mu.Unlock()
		h.stats.RelayTooLarge.Add(1)
		s.end("message too large to relay")
		writeStatusJSON(w, http.StatusOK, 410)
		return
	}
	msgs := s.takeLocked(budget)
	s.mu.Unlock()
	err := writePollJSON(w, 200, tok, msgs, h.cfg.IOTimeout)
	if err == nil {
		return
	}
	h.stats.AnswerFailures.Add(1)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		h.stats.IOTimeouts.Add(1)
	}
	h.log.Debug("transport: long-poll answer not delivered; the session ends", "remote", r.RemoteAddr, "messages", len(msgs), "err", err)
	s.end("answer not delivered")
}

// post hands each line of the body to the socket, in order (§8.3), and
// answers {"status":200}; replies come back on GET polls.
func (h *LongPollHandler) post(w http.ResponseWriter, r *http.Request, s *lpSession) {
	body, held, ok := h.readBody(w, r)
	if !ok {
		return
	}
	// Held through the wait for frameMu and the frames' handling.
	defer h.releaseBody(held)
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
