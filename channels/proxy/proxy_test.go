package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/channelsd/channelsd/channels"
)

func orderRoutes(b *backend, extra ...func(*Spec)) func(*channels.Router, *Client) {
	return func(r *channels.Router, c *Client) {
		spec := Spec{Join: b.url("/join"), Event: b.url("/event"), Leave: b.url("/leave")}
		for _, f := range extra {
			f(&spec)
		}
		r.Handle("order:*", c.Factory(spec))
		r.Handle("room:*", c.Factory(Spec{ClientBroadcast: []string{"new_msg"}}))
	}
}

// The backend decides the join, the event's reply and broadcasts, and
// sees the leave; assigns it returns come back in later calls.
func TestJoinEventLeave(t *testing.T) {
	b := newBackend(t)
	b.handle("/join", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"status":"ok","reply":{"total":12},"assigns":{"order":7}}`)
	})
	b.answer("/event", `{"status":"ok","reply":{"count":3},"assigns":{"order":7,"items":1},
		"broadcasts":[{"event":"item_added","payload":{"sku":"X1"}},{"event":"quiet","exclude_sender":true}]}`)
	e := newEnv(t, Config{}, nil, orderRoutes(b))
	ann, bob := e.open(), e.open()

	joinRef, status, resp := ann.join("order:7", `{"pin":"1234"}`)
	if status != "ok" || !jsonEq(resp, `{"total":12}`) {
		t.Fatalf("join reply %s %s", status, resp)
	}
	if _, status, _ := bob.join("order:7", `{}`); status != "ok" {
		t.Fatalf("bob's join: %s", status)
	}
	var jr JoinRequest
	if err := json.Unmarshal(b.bodies("/join")[0], &jr); err != nil {
		t.Fatal(err)
	}
	if jr.Topic != "order:7" || !jsonEq(string(jr.Params), `{"pin":"1234"}`) || !jsonEq(string(jr.Assigns), `{}`) {
		t.Errorf("join request %+v", jr)
	}

	ref := ann.push(joinRef, "order:7", "add_item", `{"sku":"X1"}`)
	if f := bob.event("item_added"); !jsonEq(string(f.payload), `{"sku":"X1"}`) {
		t.Errorf("bob got item_added %s", f.payload)
	}
	if f := bob.event("quiet"); !jsonEq(string(f.payload), `{}`) {
		t.Errorf("bob got quiet %s", f.payload)
	}
	if f := ann.event("item_added"); !jsonEq(string(f.payload), `{"sku":"X1"}`) {
		t.Errorf("ann got item_added %s", f.payload)
	}
	if status, resp := ann.reply(ref); status != "ok" || !jsonEq(resp, `{"count":3}`) {
		t.Errorf("event reply %s %s", status, resp)
	}
	var er EventRequest
	if err := json.Unmarshal(b.bodies("/event")[0], &er); err != nil {
		t.Fatal(err)
	}
	if er.Event != "add_item" || er.Ref != ref || er.Topic != "order:7" || !jsonEq(string(er.Assigns), `{"order":7}`) || !jsonEq(string(er.Payload), `{"sku":"X1"}`) {
		t.Errorf("event request %+v", er)
	}

	leaveRef := ann.push(joinRef, "order:7", channels.EventLeave, `{}`)
	if status, _ := ann.reply(leaveRef); status != "ok" {
		t.Errorf("leave reply %s", status)
	}
	select {
	case l := <-b.leaves:
		if l.Topic != "order:7" || l.Reason != "left" || !jsonEq(string(l.Assigns), `{"order":7,"items":1}`) {
			t.Errorf("leave %+v", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no leave call")
	}
}

// A refusal reaches the client as Phoenix's error reply, with the
// backend's reason or its whole reply.
func TestJoinRefused(t *testing.T) {
	b := newBackend(t)
	e := newEnv(t, Config{}, nil, orderRoutes(b))
	s := e.open()
	b.answer("/join", `{"status":"error","reason":"not your order"}`)
	if _, status, resp := s.join("order:7", `{}`); status != "error" || !jsonEq(resp, `{"reason":"not your order"}`) {
		t.Errorf("refused join: %s %s", status, resp)
	}
	b.answer("/join", `{"status":"error","reply":{"reason":"unpaid","amount":5}}`)
	if _, status, resp := s.join("order:8", `{}`); status != "error" || !jsonEq(resp, `{"reason":"unpaid","amount":5}`) {
		t.Errorf("refused join: %s %s", status, resp)
	}
	// Refused joins are not joined: no leave is sent for them.
	if n := b.count("/leave"); n != 0 {
		t.Errorf("%d leave calls for refused joins", n)
	}
}

// Every way the backend can fail gives the client {"reason":"backend
// unavailable"} within the timeout, for a join and for a push, counts the
// error by kind, and leaves the other sockets working.
func TestBackendFailures(t *testing.T) {
	huge := `{"status":"ok","reply":"` + strings.Repeat("x", 4096) + `"}`
	down := newBackend(t)
	downURL := down.url("/x")
	down.srv.Close()
	for _, tc := range []struct {
		name, kind string
		h          http.HandlerFunc
		url        string // instead of h
	}{
		{name: "down", kind: ErrorConnection, url: downURL},
		{name: "slow", kind: ErrorTimeout, h: func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{name: "500", kind: ErrorStatus, h: func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }},
		{name: "malformed", kind: ErrorMalformed, h: func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{"status":"ok"`) }},
		{name: "unknown status", kind: ErrorMalformed, h: func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{"status":"yes"}`) }},
		{name: "assigns not an object", kind: ErrorMalformed, h: func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, `{"status":"ok","assigns":[1]}`)
		}},
		{name: "huge", kind: ErrorTooLarge, h: func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, huge) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			bad := tc.url
			if bad == "" {
				b.handle("/bad", tc.h)
				bad = b.url("/bad")
			}
			m := NewMetrics()
			e := newEnv(t, Config{Timeout: 200 * time.Millisecond, MaxResponseSize: 1024, Metrics: m}, nil, func(r *channels.Router, c *Client) {
				r.Handle("badjoin:*", c.Factory(Spec{Join: bad}))
				r.Handle("badevent:*", c.Factory(Spec{Join: b.url("/join"), Event: bad}))
				r.Handle("room:*", c.Factory(Spec{ClientBroadcast: []string{"new_msg"}}))
			})
			s, other := e.open(), e.open()
			otherRef, status, _ := other.join("room:1", `{}`)
			if status != "ok" {
				t.Fatal("plain join refused")
			}

			start := time.Now()
			if _, status, resp := s.join("badjoin:1", `{}`); status != "error" || !jsonEq(resp, `{"reason":"backend unavailable"}`) {
				t.Errorf("join: %s %s", status, resp)
			}
			joinRef, status, _ := s.join("badevent:1", `{}`)
			if status != "ok" {
				t.Fatalf("join of badevent: %s", status)
			}
			ref := s.push(joinRef, "badevent:1", "go", `{}`)
			if status, resp := s.reply(ref); status != "error" || !jsonEq(resp, `{"reason":"backend unavailable"}`) {
				t.Errorf("event: %s %s", status, resp)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("two failed calls took %s with a 200ms timeout", d)
			}
			if n := value(m.errs.WithLabelValues(CallJoin, tc.kind)); n != 1 {
				t.Errorf("join errors of kind %s: %v, want 1", tc.kind, n)
			}
			if n := value(m.errs.WithLabelValues(CallEvent, tc.kind)); n != 1 {
				t.Errorf("event errors of kind %s: %v, want 1", tc.kind, n)
			}
			if n := value(m.calls.WithLabelValues(CallJoin)); n != 2 {
				t.Errorf("join calls: %v, want 2", n)
			}
			if n := histCount(m.duration.WithLabelValues(CallEvent)); n != 1 {
				t.Errorf("%d event latencies observed, want 1", n)
			}

			// The failing socket and the other one carry on.
			ref = other.push(otherRef, "room:1", "new_msg", `{"body":"hi"}`)
			if status, _ := other.reply(ref); status != "ok" {
				t.Errorf("other socket's push: %s", status)
			}
			if _, status, _ := s.join("room:1", `{}`); status != "ok" {
				t.Errorf("failing socket's next join: %s", status)
			}
		})
	}
}

// A broadcast to a proxied topic reaches its subscribers without a
// single backend call: the backend is on the client's calls only.
func TestBroadcastMakesNoProxyCall(t *testing.T) {
	b := newBackend(t)
	e := newEnv(t, Config{}, nil, orderRoutes(b))
	var socks []*sock
	for range 3 {
		s := e.open()
		if _, status, _ := s.join("order:9", `{}`); status != "ok" {
			t.Fatal("join refused")
		}
		socks = append(socks, s)
	}
	calls := b.count("/join") + b.count("/event") + b.count("/leave")
	for i := range 50 {
		if err := e.ep.Broadcast(context.Background(), "order:9", "status", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range socks {
		for i := range 50 {
			f := s.event("status")
			if !jsonEq(string(f.payload), `{"n":`+json.Number(itoa(i)).String()+`}`) {
				t.Fatalf("broadcast %d: %s", i, f.payload)
			}
		}
	}
	if after := b.count("/join") + b.count("/event") + b.count("/leave"); after != calls {
		t.Errorf("%d backend calls during the broadcasts", after-calls)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// ClientBroadcast events go out as they are, with no call, even on a
// topic whose other events are proxied.
func TestClientBroadcast(t *testing.T) {
	b := newBackend(t)
	e := newEnv(t, Config{}, nil, orderRoutes(b, func(s *Spec) { s.ClientBroadcast = []string{"typing"} }))
	ann, bob := e.open(), e.open()
	joinRef, _, _ := ann.join("order:1", `{}`)
	bob.join("order:1", `{}`)
	ref := ann.push(joinRef, "order:1", "typing", `{"who":"ann"}`)
	if status, resp := ann.reply(ref); status != "ok" || !jsonEq(resp, `{}`) {
		t.Errorf("typing reply %s %s", status, resp)
	}
	if f := bob.event("typing"); !jsonEq(string(f.payload), `{"who":"ann"}`) {
		t.Errorf("bob got %s", f.payload)
	}
	if n := b.count("/event"); n != 0 {
		t.Errorf("%d event calls for a client broadcast", n)
	}
	// Without an event URL, other events are unknown.
	rj, _, _ := ann.join("room:1", `{}`)
	ref = ann.push(rj, "room:1", "other", `{}`)
	if status, resp := ann.reply(ref); status != "error" || !jsonEq(resp, `{"reason":"unknown event"}`) {
		t.Errorf("unknown event: %s %s", status, resp)
	}
}

// The connect call names the socket and gives the user and assigns the
// joins send; its refusal and its failure refuse the connection.
func TestConnect(t *testing.T) {
	b := newBackend(t)
	b.answer("/connect", `{"status":"ok","socket_id":"user:42","user":"42","assigns":{"plan":"pro"}}`)
	m := NewMetrics()
	var e *env
	handler := &ConnectHandler{URL: b.url("/connect"), Headers: []string{"Cookie", "Authorization"}}
	e = newEnv(t, Config{Metrics: m, Timeout: 200 * time.Millisecond}, handler, func(r *channels.Router, c *Client) {
		handler.Client = c
		orderRoutes(b)(r, c)
	})
	header := http.Header{"Cookie": {"session=abc"}, "X-Secret": {"no"}}
	s, err := e.connect(&channels.ConnectInfo{Params: map[string]string{"vsn": "2.0.0"}, Header: header, RemoteAddr: "10.0.0.1:5", Transport: "websocket", AuthToken: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	if s.id != "user:42" {
		t.Errorf("socket id %q", s.id)
	}
	var cr ConnectRequest
	if err := json.Unmarshal(b.bodies("/connect")[0], &cr); err != nil {
		t.Fatal(err)
	}
	if cr.Params["vsn"] != "2.0.0" || cr.RemoteAddr != "10.0.0.1:5" || cr.Transport != "websocket" || cr.Token != "tok" ||
		len(cr.Headers) != 1 || cr.Headers["Cookie"] != "session=abc" {
		t.Errorf("connect request %+v", cr)
	}
	s.join("order:1", `{}`)
	var jr JoinRequest
	if err := json.Unmarshal(b.bodies("/join")[0], &jr); err != nil {
		t.Fatal(err)
	}
	if jr.SocketID != "user:42" || jr.User != "42" || !jsonEq(string(jr.Assigns), `{"plan":"pro"}`) {
		t.Errorf("join request %+v", jr)
	}

	b.answer("/connect", `{"status":"error","reason":"expired","http_status":401}`)
	_, err = e.connect(&channels.ConnectInfo{Params: map[string]string{}})
	var ce *channels.ConnectError
	if !errors.As(err, &ce) || ce.HTTPStatus() != 401 || ce.Reason != "expired" {
		t.Errorf("refusal: %v", err)
	}
	b.handle("/connect", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(502) })
	_, err = e.connect(&channels.ConnectInfo{Params: map[string]string{}})
	if !errors.As(err, &ce) || ce.HTTPStatus() != 503 || ce.Reason != ReasonUnavailable {
		t.Errorf("failure: %v", err)
	}
	if n := value(m.errs.WithLabelValues(CallConnect, ErrorStatus)); n != 1 {
		t.Errorf("connect status errors: %v", n)
	}
}

// countingTransport fails each request with err and counts them.
type countingTransport struct {
	n   atomic.Int32
	err error
}

func (c *countingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	c.n.Add(1)
	return nil, c.err
}

// Only a call that never reached the backend is tried again.
func TestRetriesOnlyWithoutConnection(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		tries int32
	}{
		{"dial", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, 3},
		{"read", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset")}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &countingTransport{err: tc.err}
			c, err := NewClient(Config{Retries: 2, Transport: rt})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.call(context.Background(), CallEvent, "http://backend.invalid/x", struct{}{}, &Answer{})
			var ce *CallError
			if !errors.As(err, &ce) || ce.Kind != ErrorConnection {
				t.Errorf("err %v", err)
			}
			if n := rt.n.Load(); n != tc.tries {
				t.Errorf("%d tries, want %d", n, tc.tries)
			}
		})
	}
	// An answer, even a 500, is never retried.
	b := newBackend(t)
	b.handle("/x", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
	c, err := NewClient(Config{Retries: 3, Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.call(context.Background(), CallEvent, b.url("/x"), struct{}{}, &Answer{}); err == nil {
		t.Fatal("a 500 succeeded")
	}
	if n := b.count("/x"); n != 1 {
		t.Errorf("a 500 was tried %d times", n)
	}
}

// At most MaxConns calls reach the backend at once; the others wait for
// a connection and all complete.
func TestPoolBounded(t *testing.T) {
	b := newBackend(t)
	var inflight, peak atomic.Int32
	arrived, release := make(chan struct{}, 16), make(chan struct{})
	b.handle("/slow", func(w http.ResponseWriter, _ *http.Request) {
		n := inflight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		arrived <- struct{}{}
		<-release
		inflight.Add(-1)
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	})
	c, err := NewClient(Config{MaxConns: 2, Timeout: 10 * time.Second, Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const calls = 6
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Go(func() { errs <- c.call(context.Background(), CallJoin, b.url("/slow"), struct{}{}, &Answer{}) })
	}
	for range calls {
		<-arrived
		release <- struct{}{}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if p := peak.Load(); p > 2 {
		t.Errorf("%d calls at once, MaxConns 2", p)
	}
}

func TestSignature(t *testing.T) {
	body := []byte(`{"topic":"order:7"}`)
	sig := Sign([]byte("k"), body)
	// HMAC-SHA256("k", body), computed independently (Python's hmac).
	if want := "sha256=3fff81db6d1b507c6b5650ff73eafc8e78b4869f477d2c5d460f2e968615f74c"; sig != want {
		t.Fatalf("signature %q, want %q", sig, want)
	}
	if !Verify([]byte("k"), body, sig) || Verify([]byte("k"), append(body, ' '), sig) || Verify([]byte("j"), body, sig) {
		t.Error("Verify accepts what it should not, or refuses its own signature")
	}
}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// histCount reads how many values a histogram observed.
func histCount(o prometheus.Observer) uint64 {
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		panic(err)
	}
	return m.GetHistogram().GetSampleCount()
}
