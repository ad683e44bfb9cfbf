package conformance

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// expectRefused asserts that a handshake was answered with status and
// not upgraded, and returns the refusal.
func expectRefused(t *testing.T, err error, status int) *wsclient.HandshakeError {
	t.Helper()
	var herr *wsclient.HandshakeError
	if !errors.As(err, &herr) {
		t.Fatalf("dial: err = %v, want a refused handshake (HTTP %d)", err, status)
	}
	var se ws.StatusError
	if !errors.As(err, &se) || int(se) != status || herr.Status != status {
		t.Fatalf("handshake refused with HTTP %d, want %d", herr.Status, status)
	}
	return herr
}

// heartbeatVersion tells which serializer the server picked for
// connections that dial makes: it sends a V1 heartbeat on one connection
// and a V2 heartbeat on another. Exactly one is answered, in its own
// shape; the other does not decode in the server's version, which closes
// that connection with 1007.
func heartbeatVersion(t *testing.T, ctx context.Context, dial func() *wsclient.Client) string {
	t.Helper()
	try := func(hb, want string) bool {
		c := dial()
		defer c.Close()
		if err := c.SendRaw([]byte(hb), false); err != nil {
			t.Fatal(err)
		}
		m, err := c.Next(ctx)
		if err == nil {
			if !sameJSON(m.Raw, []byte(want)) {
				t.Fatalf("after %s: got %s, want %s", hb, m, want)
			}
			return true
		}
		if st, _ := c.AwaitClose(ctx); !st.Received || st.Code != 1007 {
			t.Fatalf("after %s: no answer, connection ended with %v, want close code 1007", hb, st)
		}
		return false
	}
	v1 := try(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}`,
		`{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}`)
	v2 := try(`[null,"2","phoenix","heartbeat",{}]`, `[null,"2","phoenix","phx_reply",{"status":"ok","response":{}}]`)
	switch {
	case v1 && !v2:
		return "V1"
	case v2 && !v1:
		return "V2"
	}
	t.Fatalf("V1 heartbeat answered: %v, V2 heartbeat answered: %v; want exactly one", v1, v2)
	return ""
}

// Item 1: vsn=2.0.0 upgrades and speaks V2; vsn=1.0.0 and no vsn speak V1;
// an unsupported vsn gets 403 and no upgrade.
func TestItem01_VsnNegotiation(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, tc := range []struct {
		name string
		opts wsclient.Options
		want string
	}{
		{name: "vsn=2.0.0", opts: wsclient.Options{Vsn: "2.0.0"}, want: "V2"},
		{name: "vsn=1.0.0", opts: wsclient.Options{Vsn: "1.0.0"}, want: "V1"},
		{name: "no vsn", opts: wsclient.Options{OmitVsn: true}, want: "V1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			dial := func() *wsclient.Client {
				c, err := wsclient.Dial(ctx, tn.wsURL, tc.opts)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				return c
			}
			if got := heartbeatVersion(t, ctx, dial); got != tc.want {
				t.Fatalf("server spoke %s, want %s", got, tc.want)
			}
		})
	}
	for _, vsn := range []string{"3.0.0", "2.1.0", "two"} {
		t.Run("vsn="+vsn, func(t *testing.T) {
			_, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{Vsn: vsn})
			expectRefused(t, err, http.StatusForbidden)
		})
	}
}

// Item 2: a refused connect returns 403 with an empty body and no upgrade.
func TestItem02_RefusedConnect(t *testing.T) {
	t.Parallel()
	tn := startNode(t, withSocketHandler(channels.SocketHandlerFunc(
		func(_ context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
			switch info.Params["token"] {
			case "good":
			case "error":
				// An application error, as a connect callback returns it.
				return channels.Identity{}, errors.New("token expired")
			default:
				return channels.Identity{}, &channels.ConnectError{}
			}
			return channels.Identity{ID: "user:1"}, nil
		})))
	t.Run("refused", func(t *testing.T) {
		_, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{Params: map[string]string{"token": "bad"}})
		herr := expectRefused(t, err, http.StatusForbidden)
		if len(herr.Body) != 0 {
			t.Fatalf("refusal body = %q, want empty", herr.Body)
		}
	})
	t.Run("refused with an error", func(t *testing.T) {
		// An error that is not a ConnectError was not made for the
		// client: 403, empty body, its text only in the log.
		_, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{Params: map[string]string{"token": "error"}})
		herr := expectRefused(t, err, http.StatusForbidden)
		if len(herr.Body) != 0 {
			t.Fatalf("refusal body = %q, want empty", herr.Body)
		}
	})
	t.Run("accepted", func(t *testing.T) {
		c := tn.dial(t, v2, "token", "good")
		c.quiet()
	})
}

// Item 3: an Origin outside AllowedOrigins gets 403; no Origin header is
// allowed, and so is an allowed origin.
func TestItem03_OriginCheck(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) { c.AllowedOrigins = []string{"https://app.example"} })
	for _, tc := range []struct {
		name   string
		origin string
		ok     bool
	}{
		{name: "evil origin", origin: "https://evil.example", ok: false},
		{name: "allowed origin", origin: "https://app.example", ok: true},
		{name: "no origin", origin: "", ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := wsclient.Options{Vsn: "2.0.0"}
			if tc.origin != "" {
				opts.Header = http.Header{"Origin": {tc.origin}}
			}
			c, err := wsclient.Dial(testCtx(t), tn.wsURL, opts)
			if !tc.ok {
				herr := expectRefused(t, err, http.StatusForbidden)
				if len(herr.Body) != 0 {
					t.Errorf("refusal body = %q, want empty", herr.Body)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			c.Close()
		})
	}
}

// Item 4: the bearer token offered as a subprotocol reaches connect as
// AuthToken, and the response selects "phoenix".
func TestItem04_AuthTokenSubprotocol(t *testing.T) {
	t.Parallel()
	tokens := make(chan string, 1)
	tn := startNode(t, withSocketHandler(channels.SocketHandlerFunc(
		func(_ context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
			tokens <- info.AuthToken
			return channels.Identity{}, nil
		})))
	c := tn.dialOpts(t, v2, wsclient.Options{Protocols: []string{"phoenix", "base64url.bearer.phx.c2VjcmV0LXRva2Vu"}})
	if got := <-tokens; got != "secret-token" {
		t.Fatalf("connect saw AuthToken %q, want %q", got, "secret-token")
	}
	if c.Protocol() != "phoenix" {
		t.Fatalf("Sec-WebSocket-Protocol = %q, want %q", c.Protocol(), "phoenix")
	}
	c.quiet()
}
