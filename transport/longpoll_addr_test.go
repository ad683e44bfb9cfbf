package transport

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// lpOpenFrom sends an opening GET from remote (and X-Forwarded-For xff,
// if set) straight to the handler, and returns the HTTP status and the
// logical one (0 without a JSON body).
func lpOpenFrom(t *testing.T, h *LongPollHandler, remote, xff string) (*httptest.ResponseRecorder, int) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/socket/longpoll?vsn=2.0.0", nil)
	r.RemoteAddr = remote
	if xff != "" {
		r.Header.Set("X-Forwarded-For", xff)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code == http.StatusOK {
		var v struct {
			Status int `json:"status"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
			t.Fatalf("answer %q: %v", w.Body.String(), err)
		}
		return w, v.Status
	}
	return w, 0
}

// Issue 16 §3: the session cap was global, and 10,000 sessions opened
// from one client in 321 ms locked every other client out. One address
// (IPv6: one /64) holds at most MaxSessionsPerAddr live sessions (100 by
// default); beyond, its opening GET gets the global cap's answer (503,
// Retry-After), counted apart, and other addresses still get in.
func TestLongPollSessionsPerAddr(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{}, nil)
	h := hs.h
	for _, c := range []struct{ first, other, sameGroup string }{
		{"192.0.2.1:1000", "192.0.2.2:1000", "192.0.2.1:2000"},
		{"[2001:db8::1]:1000", "[2001:db8:0:1::1]:1000", "[2001:db8::ffff:1]:2000"},
	} {
		for i := range 100 {
			if w, st := lpOpenFrom(t, h, c.first, ""); st != 410 {
				t.Fatalf("%s: open %d: HTTP %d %q", c.first, i, w.Code, w.Body.String())
			}
		}
		w, _ := lpOpenFrom(t, h, c.sameGroup, "")
		if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || w.Body.Len() != 0 {
			t.Fatalf("%s: open 101: HTTP %d %v %q", c.sameGroup, w.Code, w.Header(), w.Body.String())
		}
		if _, st := lpOpenFrom(t, h, c.other, ""); st != 410 {
			t.Fatalf("%s: another client was refused", c.other)
		}
	}
	if n := h.Stats().AddrLimit.Load(); n != 2 {
		t.Fatalf("AddrLimit = %d", n)
	}
	if n := h.Stats().SessionLimit.Load(); n != 0 {
		t.Fatalf("SessionLimit = %d", n)
	}
	// An ended session frees its place.
	hs.ep.allSockets()[0].conn.Close(1000, "test")
	if w, st := lpOpenFrom(t, h, "192.0.2.1:3000", ""); st != 410 {
		t.Fatalf("open after a session ended: HTTP %d %q", w.Code, w.Body.String())
	}
}

// Behind trusted proxies the client is the right-most X-Forwarded-For
// address that is not a trusted proxy; the header is ignored from anyone
// else, and by default.
func TestLongPollClientAddress(t *testing.T) {
	h, err := NewLongPollHandler(newFakeEndpoint(), LongPollConfig{TrustedProxies: []string{"10.0.0.0/8", "2001:db8:ffff::1"}, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	plain, err := NewLongPollHandler(newFakeEndpoint(), LongPollConfig{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	key := func(h *LongPollHandler, remote, xff string) string {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		if xff != "" {
			r.Header.Add("X-Forwarded-For", xff)
		}
		return h.clientKey(r).String()
	}
	for _, c := range []struct {
		h           *LongPollHandler
		remote, xff string
		want        string
	}{
		{h, "10.1.2.3:5000", "203.0.113.7", "203.0.113.7/32"},
		{h, "10.1.2.3:5000", "1.1.1.1, 203.0.113.7, 10.9.9.9", "203.0.113.7/32"},
		{h, "10.1.2.3:5000", "forged, 203.0.113.7", "203.0.113.7/32"},
		{h, "10.1.2.3:5000", "", "10.1.2.3/32"},
		{h, "10.1.2.3:5000", "10.2.2.2", "10.2.2.2/32"},
		{h, "10.1.2.3:5000", "garbage", "10.1.2.3/32"},
		{h, "[2001:db8:ffff::1]:5000", "[2001:db8:1:2:3::4]:443", "2001:db8:1:2::/64"},
		{h, "[::ffff:10.1.2.3]:5000", "198.51.100.1", "198.51.100.1/32"},
		{h, "192.0.2.9:5000", "203.0.113.7", "192.0.2.9/32"},
		{plain, "10.1.2.3:5000", "203.0.113.7", "10.1.2.3/32"},
	} {
		if got := key(c.h, c.remote, c.xff); got != c.want {
			t.Errorf("peer %s, X-Forwarded-For %q: key %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
	// Two header lines read as one list.
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "10.1.2.3:5000"
	r.Header.Add("X-Forwarded-For", "203.0.113.7")
	r.Header.Add("X-Forwarded-For", "10.4.4.4")
	if got := h.clientKey(r); got != netip.MustParsePrefix("203.0.113.7/32") {
		t.Errorf("two header lines: %s", got)
	}
	// Through the proxy, clients count apart.
	for i := range 100 {
		if _, st := lpOpenFrom(t, h, "10.1.2.3:5000", "203.0.113.7"); st != 410 {
			t.Fatalf("open %d", i)
		}
	}
	if w, _ := lpOpenFrom(t, h, "10.1.2.3:5001", "203.0.113.7"); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("101st through the proxy: HTTP %d", w.Code)
	}
	if _, st := lpOpenFrom(t, h, "10.1.2.3:5000", "203.0.113.8"); st != 410 {
		t.Fatal("another client behind the proxy was refused")
	}
	if _, err := NewLongPollHandler(newFakeEndpoint(), LongPollConfig{TrustedProxies: []string{"10.0.0.0/33"}}); err == nil {
		t.Fatal("a bad CIDR was accepted")
	}
}
