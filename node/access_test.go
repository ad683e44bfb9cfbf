package node

import (
	"net/http"
	"strings"
	"testing"

	"github.com/channelsd/channelsd/pubsub/local"
)

// Without an API key the operators' endpoints serve local clients only:
// a remote peer, a page reaching loopback through a rebound DNS name, and
// a request relayed by a proxy on this host are all refused, and nothing
// happens.
func TestAPIWithoutKeyServesLocalClientsOnly(t *testing.T) {
	ps := local.New()
	n := newTestNode(t, Config{PubSub: ps})
	rec := &recorder{}
	if err := ps.Subscribe("room:1", rec); err != nil {
		t.Fatal(err)
	}
	broadcast := `{"topic":"room:1","event":"new_msg","payload":{}}`
	refused := []struct {
		name   string
		header []string
	}{
		{"remote peer", []string{":remote", "203.0.113.7:40000"}},
		{"remote peer naming localhost", []string{":remote", "203.0.113.7:40000", ":host", "localhost:4000"}},
		{"IPv6 remote peer", []string{":remote", "[2001:db8::1]:40000"}},
		{"DNS rebinding", []string{":host", "evil.example:4000"}},
		{"local proxy (X-Forwarded-For)", []string{"X-Forwarded-For", "203.0.113.7"}},
		{"local proxy (Forwarded)", []string{"Forwarded", "for=203.0.113.7"}},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			for _, call := range []struct{ method, path, body string }{
				{"POST", "/api/drain", "{}"},
				{"GET", "/api/drain", ""},
				{"POST", "/api/broadcast", broadcast},
				{"POST", "/api/disconnect", `{"id":"user:ann"}`},
				{"GET", "/metrics", ""},
				{"GET", "/dashboard", ""},
				{"GET", "/dashboard/ticket", ""},
			} {
				code, body := do(t, n.Handler(), call.method, call.path, call.body, c.header...)
				if code != http.StatusForbidden || !strings.Contains(body, "loopback") {
					t.Errorf("%s %s: %d %q, want 403 saying why", call.method, call.path, code, trunc(body))
				}
			}
		})
	}
	if n.DrainStatus().Draining {
		t.Fatal("a refused client drained the node")
	}
	if len(rec.msgs) != 0 {
		t.Fatalf("a refused client broadcast %d messages", len(rec.msgs))
	}

	// Local clients, by address or by name, are served.
	for _, local := range [][]string{
		nil,
		{":host", "localhost:4000"},
		{":remote", "[::1]:50000", ":host", "[::1]:4000"},
	} {
		if code, body := do(t, n.Handler(), "POST", "/api/broadcast", broadcast, local...); code != http.StatusAccepted {
			t.Fatalf("local client %v: %d %s, want 202", local, code, body)
		}
		if code, _ := do(t, n.Handler(), "GET", "/dashboard", "", local...); code != http.StatusOK {
			t.Fatalf("local client %v: /dashboard %d, want 200", local, code)
		}
	}
	// Probes stay open to the kubelet, from anywhere.
	if code, _ := do(t, n.Handler(), "GET", "/healthz", "", ":remote", "203.0.113.7:40000", ":host", "10.0.0.5:4000"); code != http.StatusOK {
		t.Fatalf("/healthz from a remote client: %d, want 200", code)
	}
}

// State-changing calls need Content-Type application/json, which no web
// page can make a browser send to another site without a CORS preflight:
// a cross-site form (urlencoded, multipart, text/plain) or a no-cors
// fetch without a type changes nothing, even from a local browser.
func TestStateChangingCallsRequireJSON(t *testing.T) {
	ps := local.New()
	n := newTestNode(t, Config{PubSub: ps})
	rec := &recorder{}
	_ = ps.Subscribe("room:1", rec)
	_ = ps.Subscribe("phx:socket:user:ann", rec)
	calls := []struct{ path, body string }{
		{"/api/drain", "x=1"},
		{"/api/broadcast", `{"topic":"room:1","event":"e"}`},
		{"/api/disconnect", `{"id":"user:ann"}`},
	}
	for _, ct := range []string{"", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", "application/jsonx", "text/json"} {
		for _, c := range calls {
			code, body := do(t, n.Handler(), "POST", c.path, c.body, "Content-Type", ct)
			if code != http.StatusUnsupportedMediaType || !strings.Contains(body, "application/json") {
				t.Errorf("POST %s with Content-Type %q: %d %q, want 415", c.path, ct, code, body)
			}
		}
	}
	if n.DrainStatus().Draining || len(rec.msgs) != 0 {
		t.Fatalf("refused calls had effects: draining %v, %d messages", n.DrainStatus().Draining, len(rec.msgs))
	}
	// With the type (parameters allowed), they work; the drain needs no body.
	if code, body := do(t, n.Handler(), "POST", "/api/broadcast", calls[1].body, "Content-Type", "application/json; charset=utf-8"); code != http.StatusAccepted {
		t.Fatalf("broadcast: %d %s", code, body)
	}
	if code, body := do(t, n.Handler(), "POST", "/api/drain", ""); code != http.StatusAccepted || !n.DrainStatus().Draining {
		t.Fatalf("drain: %d %s", code, body)
	}
}

// The protocol's own events cannot be broadcast: fake presence
// (presence_diff, presence_state) or fake replies and closes would make
// clients believe what no channel said.
func TestBroadcastRefusesReservedEvents(t *testing.T) {
	ps := local.New()
	n := newTestNode(t, Config{PubSub: ps})
	rec := &recorder{}
	_ = ps.Subscribe("private:a", rec)
	for _, ev := range []string{"presence_diff", "presence_state", "phx_reply", "phx_close", "phx_error", "phx_join", "phx_leave"} {
		body := `{"topic":"private:a","event":"` + ev + `","payload":{"joins":{"mallory":{"metas":[{}]}},"leaves":{}}}`
		if code, resp := do(t, n.Handler(), "POST", "/api/broadcast", body); code != http.StatusBadRequest || !strings.Contains(resp, "reserved") {
			t.Errorf("event %s: %d %s, want 400 reserved", ev, code, resp)
		}
	}
	if len(rec.msgs) != 0 {
		t.Fatalf("reserved events delivered: %+v", rec.msgs)
	}
	// Names that merely resemble them are the application's.
	if code, resp := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"private:a","event":"presence"}`); code != http.StatusAccepted {
		t.Fatalf("event presence: %d %s", code, resp)
	}
}

// With a key, the key is what counts: a local client without it is
// refused too.
func TestAPIWithKeyNeedsItEvenLocally(t *testing.T) {
	n := newTestNode(t, Config{APIKey: "s3cret"})
	if code, _ := do(t, n.Handler(), "POST", "/api/drain", "{}"); code != http.StatusUnauthorized {
		t.Fatalf("local drain without the key: %d, want 401", code)
	}
	if code, _ := do(t, n.Handler(), "POST", "/api/drain", "{}", ":remote", "203.0.113.7:40000", ":host", "channels.example", "Authorization", "Bearer s3cret"); code != http.StatusAccepted {
		t.Fatalf("remote drain with the key: %d, want 202", code)
	}
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:4000": true, "127.0.0.1": true, "127.8.9.10:80": true, "[::1]:4000": true, "::1": true,
		"localhost": true, "LOCALHOST:4000": true, "localhost.:4000": true, "dash.localhost:4000": true,
		"": false, "evil.example": false, "localhost.evil.example": false, "10.0.0.1:4000": false,
		"[::ffff:127.0.0.1]:4000": true, "127.0.0.1.nip.io": false, "0.0.0.0:4000": false,
	} {
		if got := loopbackHost(host); got != want {
			t.Errorf("loopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

func trunc(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}
