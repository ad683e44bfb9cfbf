package transport

import (
	"errors"
	"net"
	"net/url"
	"strings"
)

// originChecker holds a WebSocketConfig.AllowedOrigins list in canonical
// form (PROTOCOL.md §5.4).
type originChecker struct {
	any     bool                // empty list or "*": every origin passes
	allowed map[string]struct{} // canonical "scheme://host:port"
}

func newOriginChecker(list []string) (*originChecker, error) {
	oc := &originChecker{allowed: make(map[string]struct{}, len(list))}
	if len(list) == 0 {
		oc.any = true
		return oc, nil
	}
	for _, o := range list {
		if strings.TrimSpace(o) == "*" {
			oc.any = true
			continue
		}
		c, ok := canonicalOrigin(o, true)
		if ok && strings.Contains(c, "*") {
			return nil, errors.New("transport: allowed origin " + o + ": wildcards other than a lone \"*\" are not supported")
		}
		if !ok {
			return nil, errors.New("transport: allowed origin " + o + " is not of the form scheme://host[:port]")
		}
		oc.allowed[c] = struct{}{}
	}
	return oc, nil
}

// allow reports whether a request with Origin header value origin may
// connect. A request without the header passes: non-browser clients
// (mobile, servers) send none, and browsers always send one on a
// WebSocket handshake (RFC 6455 §4.1 item 8, §10.2), so the check only
// matters where a browser can be tricked into connecting.
func (oc *originChecker) allow(origin string, present bool) bool {
	if !present || oc.any {
		return true
	}
	c, ok := canonicalOrigin(origin, false)
	if !ok {
		// "null" (sandboxed frames, file: pages) and other hostless
		// origins are refused (§5.4).
		return false
	}
	_, ok = oc.allowed[c]
	return ok
}

// canonicalOrigin turns an origin (RFC 6454 §6.1: scheme "://" host [ ":"
// port ]) into lowercase scheme://host:port, filling in the scheme's
// default port so that "https://a.example" equals "https://a.example:443".
// A configured origin may end in "/"; a received one must not have a path.
func canonicalOrigin(s string, configured bool) (string, bool) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Scheme == "" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", false
	}
	if u.Path != "" && !(configured && u.Path == "/") {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", false
	}
	port := u.Port()
	if port == "" {
		port = defaultPort(scheme)
	}
	if port == "" {
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		return scheme + "://" + host, true
	}
	return scheme + "://" + net.JoinHostPort(host, port), true
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}
