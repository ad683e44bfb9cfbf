package conformance

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/cmd/channelsd/app"
	"github.com/channelsd/channelsd/transport"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Signed tokens (README "Security"): the default application with
// --token-secret, as channelsd wires it.

const (
	tokenSecret    = "conformance-token-secret-0123456789abcdef"
	oldTokenSecret = "conformance-token-secret-previous-0123456"
)

// startTokenNode starts a node whose default application needs tokens,
// verified with tokenSecret and, during a rotation, oldTokenSecret.
func startTokenNode(t *testing.T) (*testNode, *auth.Verifier) {
	t.Helper()
	v, err := auth.NewVerifier(tokenSecret, oldTokenSecret)
	if err != nil {
		t.Fatal(err)
	}
	return startNode(t, withSocketHandler(app.SocketHandler(app.Options{Tokens: v}))), v
}

func mustSign(t *testing.T, v *auth.Verifier, sub string, topics []string, ttl time.Duration) string {
	t.Helper()
	tok, err := v.Sign(sub, topics, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// bearer is the subprotocol phoenix.js offers for authToken (§1.4):
// standard base64 without padding.
func bearer(token string) []string {
	return []string{"phoenix", "base64url.bearer.phx." + base64.RawStdEncoding.EncodeToString([]byte(token))}
}

func TestToken_WebSocketConnect(t *testing.T) {
	t.Parallel()
	tn, v := startTokenNode(t)
	old, err := auth.NewVerifier(oldTokenSecret, "")
	if err != nil {
		t.Fatal(err)
	}
	other, err := auth.NewVerifier("some-other-secret-0123456789abcdef0123", "")
	if err != nil {
		t.Fatal(err)
	}
	good := mustSign(t, v, "alice", nil, time.Hour)
	expired := mustSign(t, v, "alice", nil, -time.Minute)

	refused := map[string]wsclient.Options{
		"no token":             {},
		"user param only":      {Params: map[string]string{"user": "alice"}},
		"garbage token":        {Params: map[string]string{"token": "garbage"}},
		"expired token":        {Params: map[string]string{"token": expired}},
		"wrong secret":         {Params: map[string]string{"token": mustSign(t, other, "alice", nil, time.Hour)}},
		"tampered token":       {Params: map[string]string{"token": good[:len(good)-2] + "xx"}},
		"garbage bearer token": {Protocols: bearer("garbage")},
	}
	for name, opts := range refused {
		t.Run(name, func(t *testing.T) {
			opts.Vsn = v2.vsn
			_, err := wsclient.Dial(testCtx(t), tn.wsURL, opts)
			herr := expectRefused(t, err, http.StatusForbidden)
			if len(herr.Body) != 0 {
				t.Errorf("refusal body %q, want empty", herr.Body)
			}
		})
	}
	t.Run("token param", func(t *testing.T) {
		c := tn.dial(t, v2, "token", good)
		c.quiet()
	})
	t.Run("bearer subprotocol", func(t *testing.T) {
		c := tn.dialOpts(t, v2, wsclient.Options{Protocols: bearer(good)})
		if c.Protocol() != "phoenix" {
			t.Fatalf("Sec-WebSocket-Protocol %q, want phoenix", c.Protocol())
		}
		c.quiet()
	})
	t.Run("previous secret during a rotation", func(t *testing.T) {
		c := tn.dial(t, v2, "token", mustSign(t, old, "alice", nil, time.Hour))
		c.quiet()
	})
}

func TestToken_LongPollConnect(t *testing.T) {
	t.Parallel()
	v, err := auth.NewVerifier(tokenSecret, "")
	if err != nil {
		t.Fatal(err)
	}
	n := startLPNode(t, transport.LongPollConfig{}, withSocketHandler(app.SocketHandler(app.Options{Tokens: v})))
	good := mustSign(t, v, "alice", nil, time.Hour)
	for name, tc := range map[string]struct {
		query  string
		header http.Header
	}{
		"no token":      {query: "vsn=2.0.0&user=alice"},
		"garbage token": {query: "vsn=2.0.0&token=garbage"},
		"expired token": {query: "vsn=2.0.0&token=" + url.QueryEscape(mustSign(t, v, "alice", nil, -time.Minute))},
		"garbage header": {query: "vsn=2.0.0",
			header: http.Header{"X-Phoenix-Authtoken": {"garbage"}}},
	} {
		t.Run("refused/"+name, func(t *testing.T) {
			if a := n.request(t, http.MethodGet, tc.query, "", tc.header); a.Raw != `{"status":403}` {
				t.Fatalf("GET ?%s: %s, want {\"status\":403}", tc.query, a.Raw)
			}
		})
	}
	check := func(t *testing.T, token string) {
		c := &lpClient{n: n, t: t, v: v2, token: token}
		c.send(`["1","1","room:lobby","phx_join",{}]`)
		c.await(`["1","1","room:lobby","phx_reply",{"status":"ok","response":{}}]`)
		// The room knows the user from the token.
		c.send(`["1","2","room:lobby","new_msg",{"body":"hi"}]`)
		c.await(`[null,null,"room:lobby","new_msg",{"body":"hi","user":"alice"}]`)
	}
	t.Run("token param", func(t *testing.T) {
		// phoenix.js puts params.token first; the session token it adds
		// later is absent on the opening GET (§8.2).
		a := n.request(t, http.MethodGet, "token="+url.QueryEscape(good)+"&vsn=2.0.0", "", nil)
		if a.Status != 410 || a.Token == "" {
			t.Fatalf("opening GET: %s", a.Raw)
		}
		check(t, a.Token)
	})
	t.Run("X-Phoenix-AuthToken", func(t *testing.T) {
		a := n.request(t, http.MethodGet, "vsn=2.0.0", "", http.Header{"X-Phoenix-Authtoken": {good}})
		if a.Status != 410 || a.Token == "" {
			t.Fatalf("opening GET: %s", a.Raw)
		}
		check(t, a.Token)
	})
}

func tokenJoin(t *testing.T, c *conn, topic string) wsclient.Message {
	t.Helper()
	m, err := c.Join(c.ctx, topic, json.RawMessage(`{}`))
	if err != nil {
		t.Fatalf("join %s: %v", topic, err)
	}
	return m
}

func expectJoinUnauthorized(t *testing.T, c *conn, topic string) {
	t.Helper()
	m := tokenJoin(t, c, topic)
	if m.Status != "error" || !sameJSON(m.Payload, []byte(`{"reason":"unauthorized"}`)) {
		t.Fatalf("join %s: %s, want error {\"reason\":\"unauthorized\"}", topic, m)
	}
}

func TestToken_PrivateTopics(t *testing.T) {
	t.Parallel()
	tn, v := startTokenNode(t)

	t.Run("no topics claim", func(t *testing.T) {
		c := tn.dial(t, v2, "token", mustSign(t, v, "alice", nil, time.Hour))
		c.join("room:lobby", `{}`)
		c.join("room:other", `{}`)
		expectJoinUnauthorized(t, c, "private:team-1")
	})
	t.Run("topics claim", func(t *testing.T) {
		c := tn.dial(t, v2, "token", mustSign(t, v, "alice", []string{"private:team-1", "room:*"}, time.Hour))
		c.join("private:team-1", `{}`)
		c.join("room:lobby", `{}`)
		expectJoinUnauthorized(t, c, "private:team-2")
		expectJoinUnauthorized(t, c, "private:team-10")
	})
	t.Run("topics claim bounds public topics", func(t *testing.T) {
		c := tn.dial(t, v2, "token", mustSign(t, v, "bob", []string{"room:lobby"}, time.Hour))
		c.join("room:lobby", `{}`)
		expectJoinUnauthorized(t, c, "room:other")
		expectJoinUnauthorized(t, c, "private:team-1")
	})
	t.Run("presence under the token's sub", func(t *testing.T) {
		c := tn.dial(t, v2, "token", mustSign(t, v, "carol", []string{"private:team-3"}, time.Hour))
		// The join parameter user cannot rename an authenticated user.
		m, err := c.Join(c.ctx, "private:team-3", json.RawMessage(`{"user":"mallory"}`))
		if err != nil || m.Status != "ok" {
			t.Fatalf("join: %v %s", err, m)
		}
		st := c.await("presence_state", func(m wsclient.Message) bool {
			return m.Topic == "private:team-3" && m.Event == "presence_state"
		})
		if !strings.Contains(string(st.Payload), `"carol"`) || strings.Contains(string(st.Payload), "mallory") {
			t.Fatalf("presence_state %s, want carol only", st.Payload)
		}
	})
}

// Without a secret (the default) private topics are closed to everyone.
func TestToken_PrivateTopicsWithoutSecret(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	c := tn.dial(t, v2, "user", "alice")
	c.join("room:lobby", `{}`)
	expectJoinUnauthorized(t, c, "private:team-1")
}

// Disconnect by id user:<sub> closes every socket of that user, whichever
// way its token came, and no other.
func TestToken_DisconnectUser(t *testing.T) {
	t.Parallel()
	tn, v := startTokenNode(t)
	a1 := tn.dial(t, v2, "token", mustSign(t, v, "alice", nil, time.Hour))
	a2 := tn.dialOpts(t, v2, wsclient.Options{Protocols: bearer(mustSign(t, v, "alice", []string{"room:*"}, time.Hour))})
	b := tn.dial(t, v2, "token", mustSign(t, v, "bob", nil, time.Hour), "user", "alice")
	for _, c := range []*conn{a1, a2, b} {
		c.quiet()
	}
	if status := tn.post(t, "/api/disconnect", `{"id":"user:alice"}`); status != http.StatusAccepted {
		t.Fatalf("POST /api/disconnect: %d", status)
	}
	a1.expectClose(1001)
	a2.expectClose(1001)
	b.quiet()
}
