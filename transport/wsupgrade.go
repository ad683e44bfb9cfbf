package transport

import (
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/gobwas/ws"
)

// The opening handshake (RFC 6455 §4.2), in Phoenix's order of checks.

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
	// Step 2. RFC 9110 §15.5.15: a server may refuse a target longer than it is
	// willing to interpret. The HTTP server has read it already (within
	// its header limit); refusing it here keeps it from the connect
	// callback, which could keep parameters for the socket's life.
	if max := h.cfg.MaxURLLength; max > 0 && len(r.RequestURI) > max {
		h.stats.URLTooLong.Add(1)
		h.refuse(w, r, http.StatusRequestURITooLong, "request target too long", "url length")
		return
	}
	// Step 3, capacity first: a node at a limit sheds the handshake before any
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
	// Step 4: origin (RFC 6455 §10.2), 403 with an empty body.
	if !h.origins.allow(originOf(r)) {
		h.refuse(w, r, http.StatusForbidden, "", "origin")
		return
	}

	// Steps 5 and 6: bearer token and subprotocols (RFC 6455 §4.2.2 item 5.4 /subprotocol/).
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

	// Steps 7 and 8: serializer (§1.2) and the application's connect,
	// before the upgrade, so that a refusal is an ordinary HTTP answer.
	ser, id, ref := connect(r.Context(), h.log, h.ep, r, "websocket", token, h.cfg.HandshakeTimeout)
	if ref != nil {
		h.refuse(w, r, ref.status, ref.reason, ref.check)
		return
	}

	// Step 9: the upgrade itself (RFC 6455 §4.2.2). HTTPUpgrader checks
	// the remaining handshake headers and answers 400 (or 426 for a wrong
	// Sec-WebSocket-Version, RFC 6455 §4.4) on the hijacked connection itself. The
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

// selectProtocol picks the subprotocol to answer with (§1.3 step 6). With
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
