package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// The cross-node relay (PROTOCOL.md §8.6). A long-poll session lives on
// the node that opened it, and its token names that node. Behind a
// round-robin load balancer the session's next request may reach any
// node: that node forwards the whole request (method, URI, headers, body)
// through LongPollConfig.Relay to the owner, which serves it against the
// session as if it had arrived there, and sends the answer back. The
// forwarding node verifies nothing but the token's shape: the token is
// signed with the owner's key, and the owner checks it.
//
// When the owner does not answer (it is gone: no node of that name
// listens; or the relay timed out, failed or refused), the session is
// lost as far as the client can tell, and the request gets what a dead
// session gets on its own node: a GET opens a new session here
// ({"status":410} with a new token: phoenix.js reconnects and rejoins), a
// POST gets {"status":410}. When the relaying node cannot hand the client
// an answer that carried messages (the client left, or did not read it
// within IOTimeout), it tells the owner (relayUndelivered), which ends the
// session as it does when its own write fails.
//
// Relayed request (the call's body):
//
//	uvarint len, method    uvarint len, request URI    uvarint len, remote address
//	uvarint header count, then per value: uvarint len, name; uvarint len, value
//	...     body, to the end
//
// Answer: uvarint HTTP status, the same header list, then the body.
//
// Neither frame has room for a new positional field: the release of
// b847059 would read it as the start of the body. Their extension point
// is the header list: an entry whose name starts with ':' (no HTTP
// request or answer has one) is a pseudo-header, carrying what a later
// release adds to the relay. b847059 passes pseudo-headers on unread (in
// the rebuilt request's headers, which the handler does not look at; an
// answer's are not passed on), so they need no gate (pubsub/redis
// gate.go, form "relay"); this release drops them before serving. A new
// method, an absolute URI or a status outside 100-599 is refused by
// every release: those are gated changes.

// maxRelayMessage bounds a relayed request and a relayed answer, each one
// Redis message: well under the 32 MB at which Redis's default
// client-output-buffer-limit for pub/sub drops a subscriber's connection
// (and everything queued on it), and at its 8 MB soft limit. A POST body
// (MaxBody) that cannot cross it is answered 413 on the relaying node;
// poll answers are cut to fit (MaxAnswerBytes).
const maxRelayMessage = 4 << 20

// maxRelayBody leaves room in maxRelayMessage for the framing: the
// method, URI, remote address and headers of a request (net/http bounds
// headers to 1 MiB by default), or the status and headers of an answer.
const maxRelayBody = maxRelayMessage - 1<<20 - 64<<10

// DefaultLongPollMaxAnswerBytes is maxRelayBody written out, so that its
// documentation shows the figure; this fails to compile if they differ.
const _ = uint(maxRelayBody-DefaultLongPollMaxAnswerBytes) + uint(DefaultLongPollMaxAnswerBytes-maxRelayBody)

// messageBounded is implemented by a Caller that carries at most
// MaxMessageSize bytes in one message (pubsub/redis, whose
// --redis-max-message-size may be below maxRelayMessage): a relayed
// request or answer above it would fail with pubsub.ErrTooLarge, and an
// answer's messages, already taken from the session, would be lost.
type messageBounded interface{ MaxMessageSize() int }

// Bytes a Caller adds to a relayed request or answer (the node's channel
// name, the call frame and envelope), and that an answer's framing (its
// status and three headers) adds to its body.
const (
	relayCallOverhead   = 4 << 10
	relayAnswerOverhead = 4 << 10
)

// relayBounds returns the largest relayed request or answer the Caller
// carries, and the largest answer body that fits in it.
func relayBounds(c pubsub.Caller) (message, answer int) {
	message = maxRelayMessage
	if mb, ok := c.(messageBounded); ok {
		message = min(message, mb.MaxMessageSize()-relayCallOverhead)
	}
	return message, min(maxRelayBody, message-relayAnswerOverhead)
}

// relayService names the long-poll handler among a node's call handlers.
const relayService = "longpoll"

// relayMargin is added to the owner's poll window when waiting for a
// relayed answer: the owner answers a GET by the end of its window, and
// the answer needs the Redis round trip back.
const relayMargin = 5 * time.Second

// Headers that describe one hop, not the request (RFC 9110 §7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Proxy-Authorization": true, "Proxy-Authenticate": true,
}

// answerHeaders are the headers of the owner's answer the forwarding
// node passes on (CORS headers are its own, set before relaying).
var answerHeaders = []string{"Content-Type", "Cache-Control", "Retry-After"}

var errRelayFrame = errors.New("transport: relayed long-poll request: malformed")

// relayKey marks a request that arrived through the relay: it is served
// here whatever its token says, never relayed again.
type relayKey struct{}

func relayed(r *http.Request) bool { return r.Context().Value(relayKey{}) != nil }

// relay forwards r to node and writes the owner's answer to w. body is
// the POST body already read (nil for a GET). It reports false, having
// written nothing, when the owner could not be reached.
func (h *LongPollHandler) relay(w http.ResponseWriter, r *http.Request, node string, body []byte) bool {
	req := appendRelayRequest(nil, r, body)
	if len(req) > h.relayMax {
		// Served here, the body would pass MaxBody; it cannot cross to the
		// owner in one message, and is refused whole, nothing processed.
		h.stats.RelayTooLarge.Add(1)
		h.stats.BodiesTooLarge.Add(1)
		writeStatusJSON(w, http.StatusRequestEntityTooLarge, 413)
		return true
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Window+relayMargin)
	defer cancel()
	h.stats.Relayed.Add(1)
	ans, err := h.cfg.Relay.Call(ctx, node, relayService, req)
	if err != nil && r.Method == http.MethodGet && r.Context().Err() != nil {
		// The client left while the owner held its poll, which may have
		// handed out messages by now: they would be lost unknown to it.
		h.notifyUndelivered(r, node)
		return true
	}
	if err != nil {
		h.stats.RelayFailures.Add(1)
		h.log.Debug("transport: long-poll relay failed; the session counts as lost", "node", node, "method", r.Method, "err", err)
		return false
	}
	status, hdr, out, err := decodeRelayAnswer(ans)
	if err != nil {
		h.stats.RelayFailures.Add(1)
		h.log.Warn("transport: long-poll relay answer undecodable", "node", node, "err", err)
		return false
	}
	for _, k := range answerHeaders {
		if v := hdr.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	if err := writeAnswer(w, status, out, h.cfg.IOTimeout); err != nil {
		// The owner has handed these messages out; the session there
		// does not know they were lost (README "Limits").
		h.stats.AnswerFailures.Add(1)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			h.stats.IOTimeouts.Add(1)
		}
		h.log.Debug("transport: relayed long-poll answer not delivered", "node", node, "err", err)
		if status == http.StatusOK && !bytes.Contains(out, []byte(`"messages":[]`)) {
			h.notifyUndelivered(r, node)
		}
	}
	return true
}

// relayUndelivered is the method of the notice a relaying node sends the
// owner when an answer that carried messages did not reach the client:
// the owner ends the session, and the client learns of the loss by
// {"status":410} on its next request, as when the owner fails to write an
// answer itself. Clients cannot send it: ServeHTTP answers any method but
// GET, POST and OPTIONS 400 before relaying.
const relayUndelivered = "CHANNELSD-UNDELIVERED"

// notifyUndelivered sends the owner the notice for r's session.
func (h *LongPollHandler) notifyUndelivered(r *http.Request, node string) {
	n := r.Clone(context.WithoutCancel(r.Context()))
	n.Method = relayUndelivered
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), relayMargin)
	defer cancel()
	if _, err := h.cfg.Relay.Call(ctx, node, relayService, appendRelayRequest(nil, n, nil)); err != nil {
		h.log.Debug("transport: long-poll undelivered notice failed", "node", node, "err", err)
	}
}

// undelivered is the owner's side of the notice.
func (h *LongPollHandler) undelivered(w http.ResponseWriter, r *http.Request) {
	if s := h.lookup(r); s != nil {
		h.stats.AnswerFailures.Add(1)
		s.end("relayed answer not delivered")
	}
	writeStatusJSON(w, http.StatusOK, 410)
}

// serveRelayed is the owner's side: the call handler registered on
// LongPollConfig.Relay.
// A panic while serving is recovered here: the call runs on a goroutine
// of the pubsub, where nothing else would catch it and the whole node
// would stop. It is logged with its stack and answered HTTP 500 with
// {"status":500}, which phoenix.js takes as an error (it reconnects).
func (h *LongPollHandler) serveRelayed(ctx context.Context, req []byte) (ans []byte) {
	defer func() {
		if v := recover(); v != nil {
			h.stats.Panics.Add(1)
			h.log.Error("transport: panic serving a relayed long-poll request", "panic", v, "stack", string(debug.Stack()))
			hdr := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Cache-Control": {"no-store"}}
			ans = appendRelayAnswer(nil, http.StatusInternalServerError, hdr, []byte(`{"status":500}`))
		}
	}()
	r, err := decodeRelayRequest(context.WithValue(ctx, relayKey{}, true), req)
	if err != nil {
		h.log.Warn("transport: relayed long-poll request undecodable", "err", err)
		return appendRelayAnswer(nil, http.StatusBadRequest, nil, nil)
	}
	rec := &relayRecorder{header: make(http.Header)}
	h.ServeHTTP(rec, r)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return appendRelayAnswer(nil, rec.status, rec.header, rec.body.Bytes())
}

// relayRecorder is the http.ResponseWriter a relayed request is served
// into.
type relayRecorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (rr *relayRecorder) Header() http.Header { return rr.header }
func (rr *relayRecorder) WriteHeader(code int) {
	if rr.status == 0 {
		rr.status = code
	}
}
func (rr *relayRecorder) Write(p []byte) (int, error) {
	rr.WriteHeader(http.StatusOK)
	return rr.body.Write(p)
}

func appendRelayRequest(dst []byte, r *http.Request, body []byte) []byte {
	dst = appendRelayString(dst, r.Method)
	dst = appendRelayString(dst, r.URL.RequestURI())
	dst = appendRelayString(dst, r.RemoteAddr)
	dst = appendRelayHeader(dst, r.Header, func(k string) bool { return !hopHeaders[k] })
	return append(dst, body...)
}

func appendRelayAnswer(dst []byte, status int, hdr http.Header, body []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(status))
	dst = appendRelayHeader(dst, hdr, func(string) bool { return true })
	return append(dst, body...)
}

func appendRelayHeader(dst []byte, hdr http.Header, keep func(string) bool) []byte {
	n := 0
	for k, vs := range hdr {
		if keep(k) {
			n += len(vs)
		}
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	for k, vs := range hdr {
		if !keep(k) {
			continue
		}
		for _, v := range vs {
			dst = appendRelayString(dst, k)
			dst = appendRelayString(dst, v)
		}
	}
	return dst
}

func appendRelayString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// relayReader reads the fields of a relayed request or answer; the first
// error sticks.
type relayReader struct {
	b   []byte
	err error
}

func (rd *relayReader) uvarint() uint64 {
	if rd.err != nil {
		return 0
	}
	v, n := binary.Uvarint(rd.b)
	if n <= 0 {
		rd.err = errRelayFrame
		return 0
	}
	rd.b = rd.b[n:]
	return v
}

func (rd *relayReader) string() string {
	n := rd.uvarint()
	if rd.err != nil {
		return ""
	}
	if n > uint64(len(rd.b)) {
		rd.err = errRelayFrame
		return ""
	}
	s := string(rd.b[:n])
	rd.b = rd.b[n:]
	return s
}

func (rd *relayReader) header() http.Header {
	n := rd.uvarint()
	// Each value takes at least two bytes: a count beyond that is a lie,
	// not an allocation to make.
	if rd.err != nil || n > uint64(len(rd.b))/2 {
		rd.err = errRelayFrame
		return nil
	}
	h := make(http.Header, n)
	for range n {
		k, v := rd.string(), rd.string()
		if rd.err != nil {
			return nil
		}
		if strings.HasPrefix(k, ":") {
			continue // a pseudo-header of a later release
		}
		h[k] = append(h[k], v)
	}
	return h
}

// decodeRelayRequest rebuilds a relayed request; its context is ctx.
func decodeRelayRequest(ctx context.Context, b []byte) (*http.Request, error) {
	rd := relayReader{b: b}
	method, uri, remote := rd.string(), rd.string(), rd.string()
	hdr := rd.header()
	if rd.err != nil {
		return nil, rd.err
	}
	if method != http.MethodGet && method != http.MethodPost && method != http.MethodOptions && method != relayUndelivered {
		return nil, errRelayFrame
	}
	r, err := http.NewRequestWithContext(ctx, method, uri, bytes.NewReader(rd.b))
	if err != nil || r.URL.IsAbs() {
		return nil, errRelayFrame
	}
	r.Header = hdr
	r.RemoteAddr = remote
	r.RequestURI = uri
	return r, nil
}

// decodeRelayAnswer parses the owner's answer.
func decodeRelayAnswer(b []byte) (status int, hdr http.Header, body []byte, err error) {
	rd := relayReader{b: b}
	st := rd.uvarint()
	hdr = rd.header()
	if rd.err != nil {
		return 0, nil, nil, rd.err
	}
	if st < 100 || st > 599 {
		return 0, nil, nil, errRelayFrame
	}
	return int(st), hdr, rd.b, nil
}

var _ io.Writer = (*relayRecorder)(nil)
