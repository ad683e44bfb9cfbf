package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// slowBackend answers /event with {"n": payload.n} at once, except the
// event "slow", which waits for release (or the call's end) and tells
// arrived when it is in.
func slowBackend(t *testing.T) (b *backend, arrived chan string, release chan struct{}) {
	b = newBackend(t)
	arrived, release = make(chan string, 128), make(chan struct{})
	b.handle("/event", func(w http.ResponseWriter, r *http.Request) {
		var er EventRequest
		if err := json.NewDecoder(r.Body).Decode(&er); err != nil {
			t.Errorf("event body: %v", err)
		}
		if er.Event == "slow" {
			arrived <- er.Topic
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, `{"status":"ok","reply":`+string(er.Payload)+`}`)
	})
	return b, arrived, release
}

// A backend slow to answer a push on one topic holds up neither the
// pushes nor the replies of the socket's other topics, nor its joins,
// while that topic's own pushes are called and answered in order, a
// client broadcast among them.
func TestSlowTopicDoesNotHoldTheSocket(t *testing.T) {
	b, arrived, release := slowBackend(t)
	e := newEnv(t, Config{Timeout: 10 * time.Second}, nil, orderRoutes(b, func(s *Spec) { s.ClientBroadcast = []string{"typing"} }))
	s := e.open()
	aRef, _, _ := s.join("order:A", `{}`)
	bRef, _, _ := s.join("order:B", `{}`)

	slow := s.push(aRef, "order:A", "slow", `{"n":1}`)
	if topic := <-arrived; topic != "order:A" {
		t.Fatalf("slow call for %s", topic)
	}
	var onA []string
	for i := 2; i <= 4; i++ {
		onA = append(onA, s.push(aRef, "order:A", "n", `{"n":`+strconv.Itoa(i)+`}`))
	}
	typing := s.push(aRef, "order:A", "typing", `{}`)

	// Topic B, and a new join, are answered while A's call hangs.
	onB := s.push(bRef, "order:B", "n", `{"n":9}`)
	f := s.next()
	if f.event != channels.EventReply || f.ref == nil || *f.ref != onB {
		t.Fatalf("first frame while A is slow: %+v, want the reply to %s on order:B", f, onB)
	}
	if _, status, _ := s.join("order:C", `{}`); status != "ok" {
		t.Fatalf("join while A is slow: %s", status)
	}
	// A's later pushes wait for its first: the backend has seen one.
	if n := eventsOn(t, b, "order:A"); len(n) != 1 {
		t.Fatalf("backend saw %d events of order:A while the first was unanswered", len(n))
	}

	close(release)
	want := append([]string{slow}, onA...)
	want = append(want, typing)
	for i, ref := range want {
		f := s.next()
		for f.event == "typing" { // the client broadcast itself
			f = s.next()
		}
		if f.event != channels.EventReply || f.topic != "order:A" || f.ref == nil || *f.ref != ref {
			t.Fatalf("reply %d on order:A: %+v, want ref %s", i, f, ref)
		}
		var r struct {
			Status   string          `json:"status"`
			Response json.RawMessage `json:"response"`
		}
		_ = json.Unmarshal(f.payload, &r)
		if ref == typing {
			if r.Status != "ok" || !jsonEq(string(r.Response), `{}`) {
				t.Errorf("typing reply %s %s", r.Status, r.Response)
			}
			continue
		}
		if r.Status != "ok" || !jsonEq(string(r.Response), `{"n":`+strconv.Itoa(i+1)+`}`) {
			t.Errorf("reply %d: %s %s", i, r.Status, r.Response)
		}
	}
	if got, want := strings.Join(eventsOn(t, b, "order:A"), " "), "slow:1 n:2 n:3 n:4"; got != want {
		t.Errorf("backend saw %q on order:A, want %q", got, want)
	}
}

// eventsOn returns the events the backend was called with for topic, in
// the order it received them, as event:n.
func eventsOn(t *testing.T, b *backend, topic string) []string {
	t.Helper()
	var out []string
	for _, body := range b.bodies("/event") {
		var er EventRequest
		var p struct{ N int }
		if err := json.Unmarshal(body, &er); err != nil {
			t.Fatal(err)
		}
		_ = json.Unmarshal(er.Payload, &p)
		if er.Topic == topic {
			out = append(out, er.Event+":"+strconv.Itoa(p.N))
		}
	}
	return out
}

// Pushes past the bound of one join's queue are refused at once and
// counted; those queued are all answered once the backend is back.
func TestQueueBounded(t *testing.T) {
	b, arrived, release := slowBackend(t)
	m := NewMetrics()
	e := newEnv(t, Config{Timeout: 10 * time.Second, Metrics: m}, nil, orderRoutes(b))
	s := e.open()
	ref, _, _ := s.join("order:A", `{}`)
	refs := []string{s.push(ref, "order:A", "slow", `{"n":0}`)}
	<-arrived
	for i := 1; i <= maxQueuedEvents; i++ {
		refs = append(refs, s.push(ref, "order:A", "n", `{"n":`+strconv.Itoa(i)+`}`))
	}
	over := s.push(ref, "order:A", "n", `{"n":-1}`)
	f := s.next()
	if f.ref == nil || *f.ref != over || !strings.Contains(string(f.payload), `"backend unavailable"`) {
		t.Fatalf("push past the queue: %+v %s, want backend unavailable", f, f.payload)
	}
	if n := value(m.errs.WithLabelValues(CallEvent, ErrorDropped)); n != 1 {
		t.Errorf("dropped events: %v, want 1", n)
	}
	close(release)
	for i, r := range refs {
		if status, resp := s.reply(r); status != "ok" || !jsonEq(resp, `{"n":`+strconv.Itoa(i)+`}`) {
			t.Fatalf("reply %d: %s %s", i, status, resp)
		}
	}
}

// A join that ends with a push still at the backend: the leave is
// answered at once, and the backend gets the leave after that push's
// call has ended; the push's late answer does not reach the client.
func TestLeaveAfterQueuedPushes(t *testing.T) {
	b, arrived, release := slowBackend(t)
	e := newEnv(t, Config{Timeout: 10 * time.Second}, nil, orderRoutes(b))
	s := e.open()
	ref, _, _ := s.join("order:A", `{}`)
	s.push(ref, "order:A", "slow", `{}`)
	<-arrived
	s.push(ref, "order:A", "n", `{"n":2}`)
	leave := s.push(ref, "order:A", channels.EventLeave, `{}`)
	if status, _ := s.reply(leave); status != "ok" {
		t.Fatalf("leave reply %s", status)
	}
	s.event(channels.EventClose)
	if n := b.count("/leave"); n != 0 {
		t.Fatalf("leave sent while a push was at the backend")
	}
	close(release)
	select {
	case l := <-b.leaves:
		if l.Reason != "left" {
			t.Errorf("leave %+v", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no leave call")
	}
	if got, want := strings.Join(eventsOn(t, b, "order:A"), " "), "slow:0 n:2"; got != want {
		t.Errorf("backend saw %q, want %q", got, want)
	}
	// The worker replied before it sent the leave: whatever it sent is
	// in the connection's queue now, and nothing of the ended join is.
	for len(s.conn.frames) > 0 {
		t.Errorf("frame after the join ended: %s", (<-s.conn.frames).Data)
	}
}

// A join whose backend call is slow holds up neither the socket's other
// topics nor its heartbeats: a push on topic B is answered while the join
// of A waits; A's join is answered when the backend answers, and a push
// the client sent on A meanwhile after that.
func TestSlowJoinDoesNotHoldTheSocket(t *testing.T) {
	b, _, _ := slowBackend(t)
	arrived, release := make(chan string, 8), make(chan struct{})
	b.handle("/join", func(w http.ResponseWriter, r *http.Request) {
		var jr JoinRequest
		if err := json.NewDecoder(r.Body).Decode(&jr); err != nil {
			t.Errorf("join body: %v", err)
		}
		if jr.Topic == "order:A" {
			arrived <- jr.Topic
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, `{"status":"ok","reply":{"topic":"`+jr.Topic+`"}}`)
	})
	e := newEnv(t, Config{Timeout: 10 * time.Second}, nil, orderRoutes(b))
	s := e.open()
	bRef, status, _ := s.join("order:B", `{}`)
	if status != "ok" {
		t.Fatalf("join of B: %s", status)
	}
	aJoin := s.joinNoWait("order:A", `{}`)
	<-arrived
	onA := s.push(aJoin, "order:A", "n", `{"n":1}`)

	onB := s.push(bRef, "order:B", "n", `{"n":9}`)
	f := s.next()
	if f.event != channels.EventReply || f.topic != "order:B" || f.ref == nil || *f.ref != onB {
		t.Fatalf("first frame while A's join is slow: %+v, want the reply to %s on order:B", f, onB)
	}
	beat := s.push("", "phoenix", "heartbeat", `{}`)
	if f := s.next(); f.topic != "phoenix" || *f.ref != beat {
		t.Fatalf("heartbeat while A's join is slow: %+v", f)
	}

	close(release)
	for _, want := range []struct{ ref, response string }{{aJoin, `{"topic":"order:A"}`}, {onA, `{"n":1}`}} {
		f := s.next()
		var r struct {
			Status   string          `json:"status"`
			Response json.RawMessage `json:"response"`
		}
		_ = json.Unmarshal(f.payload, &r)
		if f.event != channels.EventReply || f.topic != "order:A" || f.ref == nil || *f.ref != want.ref ||
			r.Status != "ok" || !jsonEq(string(r.Response), want.response) {
			t.Fatalf("on order:A: %+v %s, want the reply to %s, ok %s", f, f.payload, want.ref, want.response)
		}
	}
}

// A client that leaves while its join's call is in progress: the call is
// cancelled with the join, and the backend, which never answered the
// join, is not told of a leave.
func TestLeaveWhileJoinPending(t *testing.T) {
	b := newBackend(t)
	arrived, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	b.handle("/join", func(_ http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
		cancelled <- struct{}{}
	})
	e := newEnv(t, Config{Timeout: 10 * time.Second}, nil, orderRoutes(b))
	s := e.open()
	join := s.joinNoWait("order:A", `{}`)
	<-arrived
	leave := s.push(join, "order:A", channels.EventLeave, `{}`)
	if st, _ := s.reply(leave); st != "ok" {
		t.Fatalf("leave: %s", st)
	}
	if f := s.event(channels.EventClose); f.joinRef == nil || *f.joinRef != join {
		t.Fatalf("phx_close %+v", f)
	}
	<-cancelled
	e.client.Close() // waits for the join's worker
	if n := b.count("/leave"); n != 0 {
		t.Fatalf("%d leaves for a join the backend never answered", n)
	}
}
