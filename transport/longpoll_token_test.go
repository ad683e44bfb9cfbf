package transport

import (
	"strings"
	"testing"
	"time"
)

func TestLongPollTokenRoundTrip(t *testing.T) {
	key := []byte("k1")
	in := lpToken{NodeID: "node-a", Issued: time.UnixMilli(1_700_000_000_123)}
	copy(in.Session[:], "0123456789abcdef")
	s := signLongPollToken(key, in)
	if strings.ContainsAny(s, "+/=") {
		t.Fatalf("token %q is not URL-safe", s)
	}
	out, ok := parseLongPollToken(key, s)
	if !ok {
		t.Fatalf("token %q does not verify", s)
	}
	if out.NodeID != in.NodeID || out.Session != in.Session || !out.Issued.Equal(in.Issued) {
		t.Fatalf("round trip: got %+v, want %+v", out, in)
	}
	if _, ok := parseLongPollToken([]byte("k2"), s); ok {
		t.Fatal("token verifies with another key")
	}
	// Every single-character change is refused.
	for i := range len(s) {
		for _, c := range []byte{'A', '_', '.', '\n', '='} {
			if s[i] == c {
				continue
			}
			m := s[:i] + string(c) + s[i+1:]
			if _, ok := parseLongPollToken(key, m); ok {
				t.Fatalf("tampered token %q (position %d) verifies", m, i)
			}
		}
	}
	for _, bad := range []string{"", ".", "a.", ".b", "garbage", "a.b.c", strings.Repeat("A", 600), s + "A", s[:len(s)-1]} {
		if _, ok := parseLongPollToken(key, bad); ok {
			t.Fatalf("%q verifies", bad)
		}
	}
}

func FuzzLongPollToken(f *testing.F) {
	key := []byte("fuzz-key")
	var sess [lpSessionIDLen]byte
	copy(sess[:], "sessionsession16")
	f.Add(signLongPollToken(key, lpToken{NodeID: "n1", Session: sess, Issued: time.UnixMilli(1)}))
	f.Add(signLongPollToken(key, lpToken{Session: sess, Issued: time.UnixMilli(1 << 40)}))
	f.Add("garbage")
	f.Add("AQ.AQ")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		node, routable := longPollTokenNode(s)
		tok, ok := parseLongPollToken(key, s)
		if !ok {
			return
		}
		if !routable || node != tok.NodeID {
			t.Fatalf("verified token %q routes to %q (%v), names %q", s, node, routable, tok.NodeID)
		}
		if again := signLongPollToken(key, tok); again != s {
			t.Fatalf("verified token %q re-signs as %q", s, again)
		}
	})
}
