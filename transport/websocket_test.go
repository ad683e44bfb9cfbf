package transport

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

func TestHandshakeRefusesOtherMethods(t *testing.T) { inReadModes(t, testHandshakeRefusesOtherMethods) }

func testHandshakeRefusesOtherMethods(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{}, nil)
	for _, method := range []string{"POST", "PUT", "DELETE", "HEAD"} {
		resp, body := hs.rawRequest(t, method, "vsn=2.0.0", upgradeHeader())
		if resp.StatusCode != http.StatusBadRequest || body != "" {
			t.Errorf(
				"%s: status %d body %q, want 400 and no body",
				method, resp.StatusCode, body,
			)
		}
	}
	if n := hs.ep.connects(); n != 0 {
		t.Errorf(
			"Connect ran %d times, want 0",
			n,
		)
	}
}

func TestHandshakeOrigin(t *testing.T) { inReadModes(t, testHandshakeOrigin) }

func testHandshakeOrigin(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{
		AllowedOrigins: []string{"https://app.example", "http://dev.example:8080", "https://b.example:443/"},
	}, nil)
	cases := []struct {
		name   string
		origin string // "" = no Origin header
		ok     bool
	}{
		{
			name: "no Origin header",
			ok:   true,
		},
		{
			name:   "exact",
			origin: "https://app.example",
			ok:     true,
		},
		{
			name:   "explicit default port",
			origin: "https://app.example:443",
			ok:     true,
		},
		{
			name:   "configured with default port, sent without",
			origin: "https://b.example",
			ok:     true,
		},
		{
			name:   "case of scheme and host",
			origin: "HTTPS://App.Example",
			ok:     true,
		},
		{
			name:   "explicit port",
			origin: "http://dev.example:8080",
			ok:     true,
		},
		{
			name:   "other host",
			origin: "https://evil.example",
		},
		{
			name:   "other scheme",
			origin: "http://app.example",
		},
		{
			name:   "other port",
			origin: "https://app.example:8443",
		},
		{
			name:   "missing port",
			origin: "http://dev.example",
		},
		{
			name:   "subdomain",
			origin: "https://x.app.example",
		},
		{
			name:   "null",
			origin: "null",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := upgradeHeader()
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			resp, body := hs.rawRequest(t, "GET", "vsn=2.0.0", h)
			if tc.ok {
				if resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf(
						"status %d %q, want 101",
						resp.StatusCode, body,
					)
				}
				return
			}
			if resp.StatusCode != http.StatusForbidden || body != "" {
				t.Fatalf(
					"status %d body %q, want 403 and no body",
					resp.StatusCode, body,
				)
			}
		})
	}
}

func TestHandshakeOriginWildcard(t *testing.T) { inReadModes(t, testHandshakeOriginWildcard) }

func testHandshakeOriginWildcard(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{AllowedOrigins: []string{"*"}}, nil)
	h := upgradeHeader()
	h.Set("Origin", "https://anything.example")
	if resp, body := hs.rawRequest(t, "GET", "", h); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf(
			"status %d %q, want 101",
			resp.StatusCode, body,
		)
	}
}

func TestNewWebSocketHandlerRejectsBadOrigins(t *testing.T) {
	for _, o := range []string{"app.example", "https://", "https://a.example/path", "//a.example", "https://*.example.com"} {
		if _, err := NewWebSocketHandler(newFakeEndpoint(), WebSocketConfig{AllowedOrigins: []string{o}}); err == nil {
			t.Errorf(
				"AllowedOrigins %q accepted, want an error",
				o,
			)
		}
	}
}

func TestHandshakeVsn(t *testing.T) { inReadModes(t, testHandshakeVsn) }

func testHandshakeVsn(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{}, nil)
	for _, tc := range []struct {
		query string
		vsn   string // "" = refused
	}{
		{
			query: "",
			vsn:   "1.0.0",
		},
		{
			query: "vsn=1.0.0",
			vsn:   "1.0.0",
		},
		{
			query: "vsn=2.0.0",
			vsn:   "2.0.0",
		},
		{
			query: "vsn=3.0.0",
		},
		{
			query: "vsn=2.1.0",
		},
		{
			query: "vsn=two",
		},
	} {
		c, err := hs.tryDial(t, tc.query, ws.Dialer{})
		if tc.vsn == "" {
			var se ws.StatusError
			if !errors.As(err, &se) || int(se) != http.StatusForbidden {
				t.Errorf(
					"%q: dial error %v, want HTTP 403",
					tc.query, err,
				)
			}
			continue
		}
		if err != nil {
			t.Fatalf(
				"%q: dial: %v",
				tc.query, err,
			)
		}
		s := <-hs.ep.opened
		if got := s.ser.Vsn(); got != tc.vsn {
			t.Errorf(
				"%q: serializer %s, want %s",
				tc.query, got, tc.vsn,
			)
		}
		c.conn.Close()
	}
}

func TestHandshakeConnectRefused(t *testing.T) { inReadModes(t, testHandshakeConnectRefused) }

func testHandshakeConnectRefused(t *testing.T, m readMode) {
	ep := newFakeEndpoint()
	ep.connect = func(_ context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
		switch info.Params["case"] {
		case "custom":
			return channels.Identity{}, &channels.ConnectError{Status: http.StatusTooManyRequests, Reason: "slow down"}
		case "wrapped":
			return channels.Identity{}, errWrap{&channels.ConnectError{Status: http.StatusUnauthorized, Reason: "who are you"}}
		case "plain":
			return channels.Identity{}, &channels.ConnectError{}
		case "wrapped-by-app":
			return channels.Identity{}, fmt.Errorf("lookup password=hunter2: %w", &channels.ConnectError{Reason: "who are you"})
		default:
			// Not made for the client: its text must not reach it.
			return channels.Identity{}, errWrap{errors.New("db: password=hunter2 host=10.0.0.5")}
		}
	}
	var log logBuffer
	hs := newHarness(t, m, WebSocketConfig{Logger: log.Logger()}, ep)
	for _, tc := range []struct {
		query  string
		status int
		body   string
	}{
		{
			query:  "case=custom",
			status: http.StatusTooManyRequests,
			body:   "slow down",
		},
		{
			query:  "case=wrapped",
			status: http.StatusUnauthorized,
			body:   "who are you",
		},
		{
			query:  "case=plain",
			status: http.StatusForbidden,
			body:   "",
		},
		{
			query:  "case=wrapped-by-app",
			status: http.StatusForbidden,
			body:   "who are you",
		},
		{
			query:  "case=other",
			status: http.StatusForbidden,
			body:   "",
		},
	} {
		resp, body := hs.rawRequest(t, "GET", tc.query+"&vsn=2.0.0", upgradeHeader())
		if resp.StatusCode != tc.status || body != tc.body {
			t.Errorf(
				"%s: status %d body %q, want %d %q",
				tc.query, resp.StatusCode, body, tc.status, tc.body,
			)
		}
		if tc.body != "" && resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf(
				"%s: Content-Type %q, want text/plain",
				tc.query, resp.Header.Get("Content-Type"),
			)
		}
		if resp.Header.Get("Upgrade") != "" {
			t.Errorf(
				"%s: refusal carries Upgrade header",
				tc.query,
			)
		}
	}
	// Only the error not made for the client is logged, with its text.
	if got := log.String(); strings.Count(got, "hunter2") != 1 || !strings.Contains(got, "level=WARN") || !strings.Contains(got, "transport=websocket") {
		t.Errorf("log, want the db error once at WARN:\n%s", got)
	}
	if n := hs.h.Stats().Accepted.Load(); n != 0 {
		t.Errorf(
			"Accepted = %d, want 0",
			n,
		)
	}
	if n := len(hs.ep.allSockets()); n != 0 {
		t.Errorf(
			"Open ran %d times, want 0",
			n,
		)
	}
}

type errWrap struct{ err error }

func (e errWrap) Error() string { return "wrapped: " + e.err.Error() }
func (e errWrap) Unwrap() error { return e.err }

func TestHandshakeConnectInfo(t *testing.T) { inReadModes(t, testHandshakeConnectInfo) }

func testHandshakeConnectInfo(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{}, nil)
	c := hs.dial(t, "token=a&token=b&vsn=2.0.0&user[name]=x", ws.Dialer{
		Header: ws.HandshakeHeaderHTTP(http.Header{"X-Test": {"yes"}}),
	})
	s := <-hs.ep.opened
	info := hs.ep.lastInfo(t)
	if info.Params["token"] != "b" || info.Params["vsn"] != "2.0.0" || info.Params["user[name]"] != "x" {
		t.Errorf(
			"Params %v, want token=b (last wins), vsn=2.0.0, user[name]=x",
			info.Params,
		)
	}
	if info.Header.Get("X-Test") != "yes" {
		t.Errorf(
			"Header %v lacks X-Test",
			info.Header,
		)
	}
	if info.Transport != "websocket" || info.RemoteAddr == "" || info.AuthToken != "" {
		t.Errorf(
			"Transport %q RemoteAddr %q AuthToken %q",
			info.Transport, info.RemoteAddr, info.AuthToken,
		)
	}
	if s.id.ID != "user" {
		t.Errorf(
			"Open got identity %+v, want the one Connect returned",
			s.id,
		)
	}
	if c.hs.Protocol != "" {
		t.Errorf(
			"subprotocol %q selected, none offered",
			c.hs.Protocol,
		)
	}
}

func TestHandshakeBearerToken(t *testing.T) { inReadModes(t, testHandshakeBearerToken) }

func testHandshakeBearerToken(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{AuthToken: true}, nil)
	for _, tc := range []struct {
		name  string
		entry string
		token string
	}{
		{
			name:  "phoenix.js",
			entry: "base64url.bearer.phx.c2VjcmV0LXRva2Vu",
			token: "secret-token",
		},
		{
			name:  "standard alphabet with / and +, no padding",
			entry: "base64url.bearer.phx." + rawStd("?>?~~"),
			token: "?>?~~",
		},
		{
			name:  "padding kept",
			entry: "base64url.bearer.phx." + base64.StdEncoding.EncodeToString([]byte("ab")),
			token: "ab",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := hs.dial(t, "vsn=2.0.0", ws.Dialer{Protocols: []string{"phoenix", tc.entry}})
			<-hs.ep.opened
			if c.hs.Protocol != "phoenix" {
				t.Errorf(
					"selected subprotocol %q, want phoenix",
					c.hs.Protocol,
				)
			}
			info := hs.ep.lastInfo(t)
			if info.AuthToken != tc.token {
				t.Errorf(
					"AuthToken %q, want %q",
					info.AuthToken, tc.token,
				)
			}
			if got := info.Header.Get("Sec-Websocket-Protocol"); got != "phoenix" {
				t.Errorf(
					"connect sees Sec-WebSocket-Protocol %q, want the offer without the token",
					got,
				)
			}
		})
	}

	// An entry that does not decode is a malformed request.
	resp, _ := hs.rawRequest(t, "GET", "vsn=2.0.0", withHeader(upgradeHeader(), "Sec-Websocket-Protocol", "phoenix, base64url.bearer.phx.!!!"))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf(
			"undecodable token: status %d, want 400",
			resp.StatusCode,
		)
	}
}

func rawStd(s string) string { return base64.RawStdEncoding.EncodeToString([]byte(s)) }

func withHeader(h http.Header, k, v string) http.Header {
	h.Set(k, v)
	return h
}

func TestHandshakeBearerTokenDisabled(t *testing.T) { inReadModes(t, testHandshakeBearerTokenDisabled) }

func testHandshakeBearerTokenDisabled(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{}, nil)
	c := hs.dial(t, "vsn=2.0.0", ws.Dialer{Protocols: []string{"phoenix", "base64url.bearer.phx.c2VjcmV0LXRva2Vu"}})
	<-hs.ep.opened
	if c.hs.Protocol != "phoenix" {
		t.Errorf(
			"selected subprotocol %q, want phoenix",
			c.hs.Protocol,
		)
	}
	if tok := hs.ep.lastInfo(t).AuthToken; tok != "" {
		t.Errorf(
			"AuthToken %q with AuthToken disabled, want none",
			tok,
		)
	}
}

func TestHandshakeSubprotocols(t *testing.T) { inReadModes(t, testHandshakeSubprotocols) }

func testHandshakeSubprotocols(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{Subprotocols: []string{"mqtt", "v2"}, AuthToken: true}, nil)

	c := hs.dial(t, "", ws.Dialer{Protocols: []string{"v2", "mqtt"}})
	<-hs.ep.opened
	if c.hs.Protocol != "mqtt" {
		t.Errorf(
			"selected %q, want mqtt (first configured that was offered)",
			c.hs.Protocol,
		)
	}

	c = hs.dial(t, "", ws.Dialer{})
	<-hs.ep.opened
	if c.hs.Protocol != "" {
		t.Errorf(
			"selected %q without an offer, want none",
			c.hs.Protocol,
		)
	}

	// With the bearer token lifted, phoenix.js's "phoenix" is answered
	// even though it is not configured: the browser needs the echo.
	c = hs.dial(t, "", ws.Dialer{Protocols: []string{"phoenix", "base64url.bearer.phx.c2VjcmV0LXRva2Vu"}})
	<-hs.ep.opened
	if c.hs.Protocol != "phoenix" {
		t.Errorf(
			"selected %q, want phoenix",
			c.hs.Protocol,
		)
	}

	_, err := hs.tryDial(t, "", ws.Dialer{Protocols: []string{"stomp", "phoenix"}})
	var se ws.StatusError
	if !errors.As(err, &se) || int(se) != http.StatusForbidden {
		t.Errorf(
			"no common subprotocol: dial error %v, want HTTP 403",
			err,
		)
	}
}

func TestHandshakeMalformedUpgrade(t *testing.T) { inReadModes(t, testHandshakeMalformedUpgrade) }

func testHandshakeMalformedUpgrade(t *testing.T, m readMode) {
	hs := newHarness(t, m, WebSocketConfig{}, nil)
	h := upgradeHeader()
	h.Del("Sec-Websocket-Key")
	resp, _ := hs.rawRequest(t, "GET", "vsn=2.0.0", h)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf(
			"status %d, want 400",
			resp.StatusCode,
		)
	}
	if n := len(hs.ep.allSockets()); n != 0 {
		t.Errorf(
			"Open ran %d times, want 0",
			n,
		)
	}
}
