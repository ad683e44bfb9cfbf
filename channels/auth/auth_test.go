package auth

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/channelsd/channelsd/channels"
)

const (
	secret   = "0123456789abcdef0123456789abcdef-current"
	previous = "0123456789abcdef0123456789abcdef-previous"
	other    = "0123456789abcdef0123456789abcdef-other"
)

var epoch = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func fixedVerifier(t *testing.T, secret, previous string, now time.Time) *Verifier {
	t.Helper()
	v, err := newVerifier(secret, previous, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// signRaw signs claims (a map, so that anything can be put in) with the
// given method and key, bypassing SignClaims' checks.
func signRaw(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerify(t *testing.T) {
	v := fixedVerifier(t, secret, "", epoch)
	exp := epoch.Add(time.Hour).Unix()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	valid := signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp})
	parts := strings.Split(valid, ".")

	for _, tc := range []struct {
		name  string
		token string
		ok    bool
	}{
		{"valid", valid, true},
		{"valid with topics", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp, "topics": []string{"private:team-1", "room:*"}}), true},
		{"empty", "", false},
		{"garbage", "not.a.jwt", false},
		{"too long", strings.Repeat("a", MaxTokenLength+1), false},
		{"expired", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": epoch.Add(-time.Second).Unix()}), false},
		{"no exp", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice"}), false},
		{"not yet valid", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp, "nbf": epoch.Add(time.Minute).Unix()}), false},
		{"no sub", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"exp": exp}), false},
		{"empty sub", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "", "exp": exp}), false},
		{"sub too long", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": strings.Repeat("x", MaxSubjectLength+1), "exp": exp}), false},
		{"sub not a string", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": 42, "exp": exp}), false},
		{"wrong secret", signRaw(t, jwt.SigningMethodHS256, []byte(other), jwt.MapClaims{"sub": "alice", "exp": exp}), false},
		{"previous secret not configured", signRaw(t, jwt.SigningMethodHS256, []byte(previous), jwt.MapClaims{"sub": "alice", "exp": exp}), false},
		{"HS384", signRaw(t, jwt.SigningMethodHS384, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp}), false},
		{"RS256", signRaw(t, jwt.SigningMethodRS256, rsaKey, jwt.MapClaims{"sub": "alice", "exp": exp}), false},
		{"alg none", signRaw(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "alice", "exp": exp}), false},
		{"alg none, HS256 signature kept", b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "." + parts[2], false},
		{"alg none, no signature", b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".", false},
		{"payload changed", parts[0] + "." + b64([]byte(`{"sub":"mallory","exp":`+strconv.FormatInt(exp, 10)+`}`)) + "." + parts[2], false},
		{"topics not a list", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp, "topics": "room:*"}), false},
		{"bad topic pattern", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp, "topics": []string{"room:*:x"}}), false},
		{"empty topic pattern", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp, "topics": []string{""}}), false},
		{"too many topics", signRaw(t, jwt.SigningMethodHS256, []byte(secret), jwt.MapClaims{"sub": "alice", "exp": exp, "topics": make([]string, MaxTopics+1)}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(tc.token)
			if tc.ok {
				if err != nil || c.Subject != "alice" {
					t.Fatalf("Verify = %+v, %v; want sub alice", c, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted %q: %+v", tc.token, c)
			}
			if !errors.Is(err, ErrInvalidToken) && !errors.Is(err, ErrNoToken) && !errors.Is(err, ErrTokenTooLong) {
				t.Fatalf("Verify error %v wraps none of the package's errors", err)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	old := fixedVerifier(t, previous, "", epoch)
	rotating := fixedVerifier(t, secret, previous, epoch)
	after := fixedVerifier(t, secret, "", epoch)

	oldToken, err := old.Sign("alice", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newToken, err := rotating.Sign("bob", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := rotating.Verify(oldToken); err != nil || c.Subject != "alice" {
		t.Fatalf("during the rotation, a token of the previous secret: %+v, %v", c, err)
	}
	if c, err := rotating.Verify(newToken); err != nil || c.Subject != "bob" {
		t.Fatalf("during the rotation, a token of the new secret: %+v, %v", c, err)
	}
	if _, err := after.Verify(oldToken); err == nil {
		t.Fatal("after the rotation, a token of the old secret is still accepted")
	}
	if _, err := old.Verify(newToken); err == nil {
		t.Fatal("a node with only the old secret accepts a token of the new one")
	}
}

func TestSignRoundTrip(t *testing.T) {
	v := fixedVerifier(t, secret, "", epoch)
	for _, topics := range [][]string{nil, {}, {"private:team-1", "room:*"}} {
		tok, err := v.Sign("alice", topics, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(tok)
		if err != nil {
			t.Fatal(err)
		}
		if (c.Topics == nil) != (topics == nil) || len(c.Topics) != len(topics) {
			t.Fatalf("topics %#v came back as %#v", topics, c.Topics)
		}
		if !c.ExpiresAt.Time.Equal(epoch.Add(time.Minute)) {
			t.Fatalf("exp %v", c.ExpiresAt)
		}
	}
	if _, err := v.Sign("", nil, time.Minute); err == nil {
		t.Fatal("signed a token without sub")
	}
	if _, err := v.Sign("alice", []string{"a*b"}, time.Minute); err == nil {
		t.Fatal("signed a bad topic pattern")
	}
	later := fixedVerifier(t, secret, "", epoch.Add(time.Minute+time.Second))
	tok, _ := v.Sign("alice", nil, time.Minute)
	if _, err := later.Verify(tok); err == nil {
		t.Fatal("an expired token from Sign was accepted")
	}
}

func TestNewVerifierSecrets(t *testing.T) {
	if _, err := NewVerifier("short", ""); err == nil {
		t.Error("accepted a short secret")
	}
	if _, err := NewVerifier(secret, "short"); err == nil {
		t.Error("accepted a short previous secret")
	}
	if _, err := NewVerifier(secret, previous); err != nil {
		t.Error(err)
	}
}

func TestPatterns(t *testing.T) {
	for _, tc := range []struct {
		pattern, topic string
		want           bool
	}{
		{"room:lobby", "room:lobby", true},
		{"room:lobby", "room:lobby2", false},
		{"room:*", "room:lobby", true},
		{"room:*", "room:", true},
		{"room:*", "room", false},
		{"room:*", "private:room:x", false},
		{"*", "anything", true},
		{"private:team-1", "private:team-12", false},
		{"private:team-*", "private:team-12", true},
	} {
		if got := MatchTopic(tc.pattern, tc.topic); got != tc.want {
			t.Errorf("MatchTopic(%q, %q) = %v", tc.pattern, tc.topic, got)
		}
	}
	for _, p := range []string{"", "a*b", "**", "*a", "\xff"} {
		if ValidPattern(p) == nil {
			t.Errorf("ValidPattern(%q) = nil", p)
		}
	}
}

func TestPolicy(t *testing.T) {
	p := &Policy{Private: []string{"private:*"}}
	none := (*Claims)(nil)
	open := &Claims{}
	bounded := &Claims{Topics: []string{"private:team-1", "room:lobby"}}
	empty := &Claims{Topics: []string{}}
	all := &Claims{Topics: []string{"*"}}
	for _, tc := range []struct {
		name   string
		claims *Claims
		topic  string
		want   bool
	}{
		{"no token, public", none, "room:lobby", true},
		{"no token, private", none, "private:team-1", false},
		{"no topics claim, public", open, "room:x", true},
		{"no topics claim, private", open, "private:team-1", false},
		{"granted private", bounded, "private:team-1", true},
		{"other private", bounded, "private:team-2", false},
		{"listed public", bounded, "room:lobby", true},
		{"unlisted public", bounded, "room:other", false},
		{"empty list, public", empty, "room:lobby", false},
		{"empty list, private", empty, "private:team-1", false},
		{"star grants private", all, "private:anything", true},
	} {
		if got := p.Allows(tc.claims, tc.topic); got != tc.want {
			t.Errorf("%s: Allows(%q) = %v, want %v", tc.name, tc.topic, got, tc.want)
		}
	}
}

// AllowsAllWithoutClaims says true exactly when no topic of the route's
// pattern is private, which the test checks against Allows on topics of
// both patterns.
func TestAllowsAllWithoutClaims(t *testing.T) {
	p := &Policy{Private: []string{"private:*", "staff", "ops:team-*"}}
	for _, tc := range []struct {
		route string
		want  bool
		// a topic the route matches that Allows refuses, when want is false
		private string
	}{
		{"room:*", true, ""},
		{"lobby", true, ""},
		{"private:*", false, "private:x"},
		{"private:a", false, "private:a"},
		{"priv*", false, "private:x"},
		{"*", false, "staff"},
		{"staff", false, "staff"},
		{"staff:*", true, ""},
		{"ops:*", false, "ops:team-1"},
		{"ops:team-1", false, "ops:team-1"},
		{"ops:team", true, ""},
	} {
		if got := p.AllowsAllWithoutClaims(tc.route); got != tc.want {
			t.Errorf("AllowsAllWithoutClaims(%q) = %v, want %v", tc.route, got, tc.want)
		}
		if tc.private != "" && (!MatchTopic(tc.route, tc.private) || p.Allows(nil, tc.private)) {
			t.Errorf("%q: the test's private topic %q is not one of the route's that Allows refuses", tc.route, tc.private)
		}
	}
}

func TestSocketHandler(t *testing.T) {
	v := fixedVerifier(t, secret, previous, time.Now())
	h := &SocketHandler{Verifier: v}
	tok, err := v.Sign("alice", []string{"room:*"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range []*channels.ConnectInfo{
		{Params: map[string]string{"token": tok}},
		{Params: map[string]string{}, AuthToken: tok},
		// The bearer token wins over the parameter.
		{Params: map[string]string{"token": "garbage"}, AuthToken: tok},
	} {
		id, err := h.Connect(context.Background(), info)
		if err != nil {
			t.Fatalf("Connect(%+v): %v", info, err)
		}
		if id.ID != "user:alice" || id.Assigns[AssignUser] != "alice" {
			t.Fatalf("identity %+v", id)
		}
		if c, _ := id.Assigns[AssignClaims].(*Claims); c == nil || c.Subject != "alice" || len(c.Topics) != 1 {
			t.Fatalf("claims assign %+v", id.Assigns[AssignClaims])
		}
	}
	for _, info := range []*channels.ConnectInfo{
		{Params: map[string]string{}},
		{Params: map[string]string{"token": "garbage"}},
		{Params: map[string]string{"user": "alice"}},
	} {
		_, err := h.Connect(context.Background(), info)
		var ce *channels.ConnectError
		if !errors.As(err, &ce) || ce.HTTPStatus() != http.StatusForbidden || ce.Reason != "" {
			t.Fatalf("Connect(%+v) = %v, want a ConnectError 403 with no reason", info, err)
		}
	}
	custom := &SocketHandler{Verifier: v, Identify: func(_ context.Context, _ *channels.ConnectInfo, c *Claims) (channels.Identity, error) {
		return channels.Identity{ID: "member:" + c.Subject, Assigns: map[string]any{"k": 1}}, nil
	}}
	id, err := custom.Connect(context.Background(), &channels.ConnectInfo{AuthToken: tok})
	if err != nil || id.ID != "member:alice" || id.Assigns["k"] != 1 || id.Assigns[AssignClaims] == nil {
		t.Fatalf("custom identity %+v, %v", id, err)
	}
}

// The guard keeps the optional behaviours of the channel it wraps, each
// exactly when the channel has it.
func TestGuardKeepsInterfaces(t *testing.T) {
	p := &Policy{}
	for _, tc := range []struct {
		ch              channels.Channel
		after, out, end bool
	}{
		{plainChannel{}, false, false, false},
		{afterChannel{}, true, false, false},
		{outChannel{}, false, true, false},
		{endChannel{}, false, false, true},
		{bothChannel{}, true, true, false},
		{afterEndChannel{}, true, false, true},
		{outEndChannel{}, false, true, true},
		{allChannel{}, true, true, true},
	} {
		g := p.Guard(func(string) channels.Channel { return tc.ch })("room:x")
		_, after := g.(channels.AfterJoiner)
		_, out := g.(channels.Interceptor)
		_, end := g.(channels.Terminator)
		if after != tc.after || out != tc.out || end != tc.end {
			t.Errorf("%T: guarded AfterJoiner %v Interceptor %v Terminator %v", tc.ch, after, out, end)
		}
	}
}

type endChannel struct{ plainChannel }

func (endChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

type afterEndChannel struct{ afterChannel }

func (afterEndChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

type outEndChannel struct{ outChannel }

func (outEndChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

type allChannel struct{ bothChannel }

func (allChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

type plainChannel struct{}

func (plainChannel) Join(*channels.ChannelSocket, channels.Payload) (any, error) { return nil, nil }
func (plainChannel) HandleIn(*channels.ChannelSocket, channels.In) channels.Result {
	return channels.NoReply()
}

type afterChannel struct{ plainChannel }

func (afterChannel) AfterJoin(*channels.ChannelSocket) {}

type outChannel struct{ plainChannel }

func (outChannel) Intercepts() []string                            { return []string{"x"} }
func (outChannel) HandleOut(*channels.ChannelSocket, channels.Out) {}

type bothChannel struct{ plainChannel }

func (bothChannel) AfterJoin(*channels.ChannelSocket)               {}
func (bothChannel) Intercepts() []string                            { return nil }
func (bothChannel) HandleOut(*channels.ChannelSocket, channels.Out) {}
