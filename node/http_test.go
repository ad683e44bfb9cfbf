package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

// failingPinger is a PubSub whose Ping fails, as a Redis-backed one does
// while Redis is unreachable.
type failingPinger struct {
	*local.PubSub
	err error
}

func (f failingPinger) Ping(context.Context) error { return f.err }

type recorder struct {
	mu   sync.Mutex
	msgs []*pubsub.Message
}

func (r *recorder) SubscriberID() string { return "rec" }
func (r *recorder) Deliver(m *pubsub.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func newTestNode(t *testing.T, cfg Config) *Node {
	t.Helper()
	cfg.Router = &channels.Router{}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown(context.Background()) })
	return n
}

// do serves one request to h, from a local client (loopback peer and
// host) with a JSON body unless header says otherwise: the pseudo-headers
// ":remote" and ":host" set the peer and the Host, and an empty value
// deletes a header.
func do(t *testing.T, h http.Handler, method, path, body string, header ...string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr, req.Host = "127.0.0.1:50000", "127.0.0.1:4000"
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		switch k, v := header[i], header[i+1]; {
		case k == ":remote":
			req.RemoteAddr = v
		case k == ":host":
			req.Host = v
		case v == "":
			req.Header.Del(k)
		default:
			req.Header.Set(k, v)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestBroadcastAPIDeliversAndChecksTheKey(t *testing.T) {
	ps := local.New()
	n := newTestNode(t, Config{APIKey: "s3cret", PubSub: ps})
	rec := &recorder{}
	if err := ps.Subscribe("room:1", rec); err != nil {
		t.Fatal(err)
	}
	body := `{"topic":"room:1","event":"new_msg","payload":{"body":"hi"}}`

	if code, _ := do(t, n.Handler(), "POST", "/api/broadcast", body); code != http.StatusUnauthorized {
		t.Fatalf("no key: status %d, want 401", code)
	}
	if code, _ := do(t, n.Handler(), "POST", "/api/broadcast", body, "Authorization", "Bearer wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong key: status %d, want 401", code)
	}
	if len(rec.msgs) != 0 {
		t.Fatal("an unauthorized broadcast was delivered")
	}
	code, resp := do(t, n.Handler(), "POST", "/api/broadcast", body, "Authorization", "Bearer s3cret")
	if code != http.StatusAccepted {
		t.Fatalf("with key: status %d (%s), want 202", code, resp)
	}
	if len(rec.msgs) != 1 || rec.msgs[0].Event != "new_msg" || string(rec.msgs[0].Payload) != `{"body":"hi"}` {
		t.Fatalf("delivered %+v", rec.msgs)
	}
}

// tooLargePubSub refuses every publish as pubsub/redis refuses one above
// --redis-max-message-size.
type tooLargePubSub struct{ pubsub.PubSub }

func (tooLargePubSub) Publish(context.Context, *pubsub.Message) error {
	return fmt.Errorf("redis: %w", pubsub.ErrTooLarge)
}

// A broadcast its PubSub refuses as too large is the caller's error (413),
// not an outage (503) worth retrying.
func TestBroadcastAPITooLargeFor(t *testing.T) {
	n := newTestNode(t, Config{PubSub: tooLargePubSub{local.New()}})
	code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"room:1","event":"e","payload":{}}`)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "too large") {
		t.Fatalf("status %d body %s; want 413", code, body)
	}
}

func TestBroadcastAPIRejectsBadInput(t *testing.T) {
	ps := local.New()
	n := newTestNode(t, Config{PubSub: ps, MaxFrameSize: 1024})
	rec := &recorder{}
	_ = ps.Subscribe("room:1", rec)
	cases := []struct {
		name, body string
		status     int
		errPart    string
	}{
		{"malformed JSON", `{"topic":`, 400, "malformed JSON"},
		{"not an object", `[1,2]`, 400, "malformed JSON"},
		{"missing topic", `{"event":"e"}`, 400, "required"},
		{"missing event", `{"topic":"room:1"}`, 400, "required"},
		{"unknown field", `{"topic":"room:1","event":"e","x":1}`, 400, "unknown field"},
		{"payload not an object", `{"topic":"room:1","event":"e","payload":[1]}`, 400, "must be a JSON object"},
		{"reserved event", `{"topic":"room:1","event":"phx_close"}`, 400, "reserved"},
		{"reserved topic", `{"topic":"phx:socket:u1","event":"disconnect"}`, 400, "reserved"},
		{"trailing data", `{"topic":"room:1","event":"e"} {}`, 400, "trailing"},
		{"too large", `{"topic":"room:1","event":"e","payload":{"p":"` + strings.Repeat("x", 2000) + `"}}`, 413, "too large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, n.Handler(), "POST", "/api/broadcast", c.body)
			if code != c.status || !strings.Contains(body, c.errPart) || !strings.Contains(body, `"error"`) {
				t.Fatalf("status %d body %s; want %d with a JSON error containing %q", code, body, c.status, c.errPart)
			}
		})
	}
	if code, _ := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"room:1","event":"e"}`, "Content-Type", "text/plain"); code != http.StatusUnsupportedMediaType {
		t.Fatalf("text/plain body: status %d, want 415", code)
	}
	if len(rec.msgs) != 0 {
		t.Fatalf("bad requests delivered %d messages", len(rec.msgs))
	}
	// A missing payload is an empty object.
	if code, _ := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"room:1","event":"e"}`); code != 202 || string(rec.msgs[0].Payload) != "{}" {
		t.Fatalf("payload-less broadcast: status %d, payload %q", code, rec.msgs[0].Payload)
	}
}

func TestDisconnectAPI(t *testing.T) {
	ps := local.New()
	n := newTestNode(t, Config{PubSub: ps})
	rec := &recorder{}
	_ = ps.Subscribe("phx:socket:user:ann", rec)
	if code, _ := do(t, n.Handler(), "POST", "/api/disconnect", `{}`); code != 400 {
		t.Fatalf("missing id: status %d, want 400", code)
	}
	if code, _ := do(t, n.Handler(), "POST", "/api/disconnect", `{"id":"user:ann"}`); code != 202 {
		t.Fatalf("status %d, want 202", code)
	}
	if len(rec.msgs) != 1 || rec.msgs[0].Event != "disconnect" {
		t.Fatalf("disconnect request not published on the id topic: %+v", rec.msgs)
	}
}

func TestProbes(t *testing.T) {
	down := failingPinger{PubSub: local.New(), err: errors.New("redis: not connected")}
	n := newTestNode(t, Config{PubSub: down})
	if code, _ := do(t, n.Handler(), "GET", "/healthz", ""); code != 200 {
		t.Fatalf("/healthz = %d while the PubSub is down, want 200", code)
	}
	if code, body := do(t, n.Handler(), "GET", "/readyz", ""); code != 503 || !strings.Contains(body, "redis") {
		t.Fatalf("/readyz = %d %q while the PubSub is down, want 503 naming the cause", code, body)
	}

	up := newTestNode(t, Config{})
	if code, _ := do(t, up.Handler(), "GET", "/readyz", ""); code != 200 {
		t.Fatalf("/readyz = %d, want 200", code)
	}
	if err := up.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code, _ := do(t, up.Handler(), "GET", "/readyz", ""); code != 503 {
		t.Fatalf("/readyz after shutdown = %d, want 503", code)
	}
}
