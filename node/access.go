package node

import (
	"crypto/subtle"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Who may use the operators' endpoints (/api/*, /dashboard, and /metrics
// unless Config.MetricsPublic): README "Security".
//
// With an API key, any client presenting it (Authorization: Bearer, or
// for the dashboard a session cookie from its login form). Without one,
// only local clients: a loopback peer that names a loopback host and came
// through no proxy. The host check stops DNS rebinding (a page on
// evil.example whose name now resolves to 127.0.0.1 sends Host:
// evil.example); the proxy check stops a reverse proxy on the same host
// from lending its loopback address to the whole network.

// errNotLocal is the answer to a remote client when no key is set.
const errNotLocal = "no API key is set (--api-key, CHANNELS_API_KEY): this endpoint serves loopback clients only"

// forwardHeaders mark a request relayed by a proxy.
var forwardHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-Ip"}

// localRequest reports whether r comes from this host directly: see the
// comment at the top of the file.
func localRequest(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !peer.Unmap().IsLoopback() {
		return false
	}
	for _, h := range forwardHeaders {
		if _, ok := r.Header[h]; ok {
			return false
		}
	}
	return loopbackHost(r.Host)
}

// loopbackHost reports whether a Host header names this host by a
// loopback name: localhost (RFC 6761 §6.3 reserves it and its subdomains)
// or a loopback address.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// bearerOK reports whether r carries the API key as a bearer token.
// Constant time; false when no key is set.
func (n *Node) bearerOK(r *http.Request) bool {
	if n.cfg.APIKey == "" {
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(n.cfg.APIKey)) == 1
}

// requireKey guards an operators' endpoint: with an API key, callers
// must present it; without, only local clients are served.
func (n *Node) requireKey(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !n.operator(w, r) {
			return
		}
		h(w, r)
	}
}

// operator answers a request the access rule refuses (401 without the
// key, 403 from a remote client when there is none) and reports whether
// it may go on.
func (n *Node) operator(w http.ResponseWriter, r *http.Request) bool {
	switch {
	case n.cfg.APIKey == "":
		if localRequest(r) {
			return true
		}
		writeJSONError(w, http.StatusForbidden, errNotLocal)
		return false
	case n.bearerOK(r):
		return true
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="channelsd"`)
	writeJSONError(w, http.StatusUnauthorized, "missing or wrong API key")
	return false
}

// requireJSON refuses a state-changing request whose body is not declared
// application/json (415). A browser sends another page's cross-site form
// or no-cors fetch only with a form or text/plain type, or none; to send
// application/json it must first ask by a CORS preflight, which this
// server never grants. So no web page can make a visitor's browser call
// the API, whatever the visitor's network position.
func requireJSON(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			writeJSONError(w, http.StatusUnsupportedMediaType, "the body must be declared Content-Type: application/json")
			return
		}
		h(w, r)
	}
}

// logAccess says at start-up who may use the operators' endpoints.
func (n *Node) logAccess() {
	guarded := "/api/*, /dashboard and /metrics"
	if n.cfg.MetricsPublic {
		guarded = "/api/* and /dashboard (/metrics is public)"
	}
	if n.cfg.APIKey != "" {
		n.log.Info("node: " + guarded + " need the API key")
		return
	}
	n.log.Warn("node: no API key: " + guarded + " answer loopback clients only; set CHANNELS_API_KEY to use them from elsewhere")
}
