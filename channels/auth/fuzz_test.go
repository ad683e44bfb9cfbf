package auth

import (
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzVerify feeds arbitrary strings to the token parser and our claim
// checks: nothing may panic, and whatever is accepted must have passed
// every check (HS256 under the secret, sub, exp, topic patterns).
func FuzzVerify(f *testing.F) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	v, err := newVerifier(secret, previous, func() time.Time { return now })
	if err != nil {
		f.Fatal(err)
	}
	good, _ := v.Sign("alice", []string{"private:team-1", "room:*"}, time.Hour)
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.")
	f.Add(good[:strings.LastIndexByte(good, '.')] + ".")
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token)
		if err != nil {
			if c != nil {
				t.Fatalf("claims returned with error %v", err)
			}
			return
		}
		// Accepted: it must have been signed by us, which the fuzzer
		// cannot do except by reusing a seed.
		if c.Subject == "" || c.ExpiresAt == nil || !c.ExpiresAt.After(now) {
			t.Fatalf("accepted claims %+v", c)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted claims fail Validate: %v", err)
		}
		tok, _, err := jwt.NewParser().ParseUnverified(token, &Claims{})
		if err != nil || tok.Method.Alg() != "HS256" {
			t.Fatalf("accepted a token of alg %v (%v)", tok, err)
		}
		for _, p := range c.Topics {
			_ = MatchTopic(p, "private:team-1")
		}
	})
}
