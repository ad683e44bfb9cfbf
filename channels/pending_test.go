package channels

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// lateChannel answers its joins later: each pending join's ChannelSocket
// goes to got. It pushes during Join and in AfterJoin, so that the order
// of the frames shows where each went.
type lateChannel struct {
	got   chan *ChannelSocket
	ended chan Reason
}

func newLateChannel() *lateChannel {
	return &lateChannel{got: make(chan *ChannelSocket, 16), ended: make(chan Reason, 16)}
}

func (l *lateChannel) Join(s *ChannelSocket, _ Payload) (any, error) {
	if err := s.Push("during_join", nil); err != nil {
		panic(err)
	}
	l.got <- s
	return Pending(), nil
}

func (l *lateChannel) HandleIn(_ *ChannelSocket, in In) Result {
	return Ok(map[string]string{"echo": in.Event})
}

func (l *lateChannel) AfterJoin(s *ChannelSocket) {
	if err := s.Push("after_join", nil); err != nil {
		panic(err)
	}
}

func (l *lateChannel) Terminate(_ *ChannelSocket, r Reason) { l.ended <- r }

var (
	_ AfterJoiner = (*lateChannel)(nil)
	_ Terminator  = (*lateChannel)(nil)
)

// chanConn hands each frame a socket sends to the test as it is sent.
type chanConn struct{ frames chan Frame }

func (c *chanConn) Send(f Frame) error {
	c.frames <- f
	return nil
}
func (c *chanConn) Close(int, string) {}

// next returns the next frame the socket sends, decoded.
func (c *chanConn) next(t *testing.T) Message {
	t.Helper()
	select {
	case f := <-c.frames:
		m, err := V2.Decode(f.Data, false)
		if err != nil {
			t.Fatalf("frame %q: %v", f.Data, err)
		}
		m.Payload = append([]byte(nil), m.Payload...)
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no frame within 5s")
	}
	return Message{}
}

// none fails if the socket has sent a frame not yet taken.
func (c *chanConn) none(t *testing.T) {
	t.Helper()
	select {
	case f := <-c.frames:
		t.Fatalf("unexpected frame %s", f.Data)
	default:
	}
}

func (c *chanConn) expect(t *testing.T, topic, event, status, payload string) Message {
	t.Helper()
	m := c.next(t)
	if m.Topic != topic || m.Event != event || m.Status != status || payload != "" && string(m.Payload) != payload {
		t.Fatalf("got %s %s %q %s, want %s %s %q %s", m.Topic, m.Event, m.Status, m.Payload, topic, event, status, payload)
	}
	return m
}

func lateEnv(t *testing.T, cfg EndpointConfig) (*testEnv, *lateChannel, *Socket, *chanConn) {
	t.Helper()
	l := newLateChannel()
	cfg.Router = &Router{}
	cfg.Router.Handle("room:*", func(string) Channel { return relayChannel{} })
	cfg.Router.Handle("late:*", func(string) Channel { return l })
	e := newTestEnv(t, cfg)
	conn := &chanConn{frames: make(chan Frame, 1024)}
	s := e.ep.Runtime().Open(conn, V2, Identity{})
	t.Cleanup(s.handleClose)
	return e, l, s, conn
}

func (l *lateChannel) pending(t *testing.T) *ChannelSocket {
	t.Helper()
	select {
	case c := <-l.got:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("Join not called")
	}
	return nil
}

func (l *lateChannel) terminated(t *testing.T, want Reason) {
	t.Helper()
	select {
	case r := <-l.ended:
		if r != want {
			t.Fatalf("Terminate(%q), want %q", r, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Terminate(%q) not called", want)
	}
}

// A join answered ok later: nothing of it goes out before the answer (the
// socket answers its heartbeats and other topics meanwhile), then the
// reply, the push made during Join, AfterJoin's push, and the reply to
// the push the client sent while the join was pending, in that order.
func TestLateJoinOK(t *testing.T) {
	e, l, s, conn := lateEnv(t, EndpointConfig{})
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	c := l.pending(t)
	s.handleFrame([]byte(`["1","2","late:a","ping",{}]`), false)
	conn.none(t)

	s.handleFrame([]byte(`[null,"3","phoenix","heartbeat",{}]`), false)
	conn.expect(t, TopicPhoenix, EventReply, "ok", "{}")
	s.handleFrame([]byte(`["4","4","room:b","phx_join",{}]`), false)
	conn.expect(t, "room:b", EventReply, "ok", "{}")
	conn.none(t)
	if n := e.ps.Subscribers("late:a"); n != 0 {
		t.Fatalf("a pending join has %d subscribers", n)
	}

	if err := c.CompleteJoin(map[string]int{"a": 1}, nil); err != nil {
		t.Fatal(err)
	}
	m := conn.expect(t, "late:a", EventReply, "ok", `{"a":1}`)
	if m.Ref.Text() != "1" || m.JoinRef.Text() != "1" {
		t.Fatalf("join reply refs %s/%s", m.JoinRef, m.Ref)
	}
	conn.expect(t, "late:a", "during_join", "", "")
	conn.expect(t, "late:a", "after_join", "", "")
	if m := conn.expect(t, "late:a", EventReply, "ok", `{"echo":"ping"}`); m.Ref.Text() != "2" {
		t.Fatalf("push reply ref %s", m.Ref)
	}
	if err := c.CompleteJoin(nil, nil); !errors.Is(err, ErrJoinNotPending) {
		t.Fatalf("second CompleteJoin: %v", err)
	}
	// Joined: broadcasts reach it.
	if err := c.Broadcast("news", nil); err != nil {
		t.Fatal(err)
	}
	conn.expect(t, "late:a", "news", "", "{}")
	if got := e.ep.Stats().Channels.Load(); got != 2 {
		t.Fatalf("Channels = %d, want 2", got)
	}
}

// A join refused later gets its error reply; Terminate is not called, as
// for a join refused at once, and the push that waited is answered as a
// push to a topic not joined.
func TestLateJoinRefuse(t *testing.T) {
	for _, tc := range []struct {
		err   error
		reply string
	}{
		{Refuse("banned"), `{"reason":"banned"}`},
		{errors.New("db down"), `{"reason":"join crashed"}`},
	} {
		e, l, s, conn := lateEnv(t, EndpointConfig{})
		s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
		c := l.pending(t)
		s.handleFrame([]byte(`["1","2","late:a","ping",{}]`), false)
		if err := c.CompleteJoin(nil, tc.err); err != nil {
			t.Fatal(err)
		}
		conn.expect(t, "late:a", EventReply, "error", tc.reply)
		conn.expect(t, "late:a", EventReply, "error", `{"reason":"unmatched topic"}`)
		conn.none(t)
		select {
		case r := <-l.ended:
			t.Fatalf("refused join terminated with %q", r)
		default:
		}
		if e.ep.Stats().Channels.Load() != 0 || e.ps.Subscribers("late:a") != 0 {
			t.Fatal("refused join left a channel")
		}
		if err := c.CompleteJoin(nil, nil); !errors.Is(err, ErrJoinNotPending) {
			t.Fatalf("CompleteJoin after refusal: %v", err)
		}
	}
}

// A client that leaves a pending join gets its leave reply and phx_close;
// the channel is told, its context ends, and its late answer is dropped.
// The pushes that waited for the join are answered first, in order, as
// pushes to a topic not joined (a push without a ref gets nothing).
func TestPendingJoinLeave(t *testing.T) {
	e, l, s, conn := lateEnv(t, EndpointConfig{})
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	c := l.pending(t)
	ctx := c.Context()
	s.handleFrame([]byte(`["1","p1","late:a","ping",{}]`), false)
	s.handleFrame([]byte(`["1",null,"late:a","ping",{}]`), false)
	s.handleFrame([]byte(`["1","p2","late:a","ping",{}]`), false)
	conn.none(t)
	s.handleFrame([]byte(`["1","2","late:a","phx_leave",{}]`), false)
	for _, ref := range []string{"p1", "p2"} {
		m := conn.expect(t, "late:a", EventReply, "error", `{"reason":"unmatched topic"}`)
		if m.Ref.Text() != ref || !m.JoinRef.IsNull() {
			t.Fatalf("reply to %s/%s, want null/%s", m.JoinRef, m.Ref, ref)
		}
	}
	if m := conn.expect(t, "late:a", EventReply, "ok", "{}"); m.Ref.Text() != "2" {
		t.Fatalf("leave reply to %s", m.Ref)
	}
	conn.expect(t, "late:a", EventClose, "", "{}")
	l.terminated(t, ReasonLeft)
	if ctx.Err() == nil {
		t.Fatal("context of a left pending join not cancelled")
	}
	if err := c.CompleteJoin(nil, nil); !errors.Is(err, ErrJoinNotPending) {
		t.Fatalf("CompleteJoin after leave: %v", err)
	}
	conn.none(t)
	if e.ep.Stats().Channels.Load() != 0 {
		t.Fatal("a left pending join still counts")
	}
}

// A connection closed while a join is pending: Terminate(closed), the
// late answer dropped.
func TestPendingJoinClose(t *testing.T) {
	e, l, s, conn := lateEnv(t, EndpointConfig{})
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	c := l.pending(t)
	s.handleClose()
	l.terminated(t, ReasonClosed)
	if err := c.CompleteJoin(nil, nil); !errors.Is(err, ErrJoinNotPending) {
		t.Fatalf("CompleteJoin after close: %v", err)
	}
	conn.none(t)
	if e.ep.Stats().Channels.Load() != 0 || e.ps.Subscribers("late:a") != 0 {
		t.Fatal("a closed pending join left a channel")
	}
}

// A new join of a topic whose join is pending replaces it, as it replaces
// a joined one: the push that waited for the old join is answered as a
// push to a topic not joined (never handed to the new join), the old
// one's answer is dropped, phx_close for its join_ref, and the new one is
// answered.
func TestPendingJoinRejoin(t *testing.T) {
	_, l, s, conn := lateEnv(t, EndpointConfig{})
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	old := l.pending(t)
	s.handleFrame([]byte(`[null,"p1","late:a","ping",{}]`), false)
	s.handleFrame([]byte(`["2","2","late:a","phx_join",{}]`), false)
	c := l.pending(t)
	l.terminated(t, ReasonDuplicateJoin)
	if m := conn.expect(t, "late:a", EventReply, "error", `{"reason":"unmatched topic"}`); m.Ref.Text() != "p1" {
		t.Fatalf("reply to %s", m.Ref)
	}
	if m := conn.expect(t, "late:a", EventClose, "", "{}"); m.JoinRef.Text() != "1" {
		t.Fatalf("phx_close for join_ref %s", m.JoinRef)
	}
	if err := old.CompleteJoin(nil, nil); !errors.Is(err, ErrJoinNotPending) {
		t.Fatalf("CompleteJoin of the replaced join: %v", err)
	}
	conn.none(t)
	if err := c.CompleteJoin(nil, nil); err != nil {
		t.Fatal(err)
	}
	if m := conn.expect(t, "late:a", EventReply, "ok", "{}"); m.JoinRef.Text() != "2" || m.Ref.Text() != "2" {
		t.Fatalf("reply to %s/%s", m.JoinRef, m.Ref)
	}
	conn.expect(t, "late:a", "during_join", "", "")
	conn.expect(t, "late:a", "after_join", "", "")
}

// A join not answered within JoinTimeout fails with a timeout reason;
// the push that waited for it is answered next, as a push to a topic not
// joined.
func TestPendingJoinTimeout(t *testing.T) {
	e, l, s, conn := lateEnv(t, EndpointConfig{JoinTimeout: 50 * time.Millisecond})
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	c := l.pending(t)
	s.handleFrame([]byte(`["1","p1","late:a","ping",{}]`), false)
	conn.expect(t, "late:a", EventReply, "error", `{"reason":"join timeout"}`)
	if m := conn.expect(t, "late:a", EventReply, "error", `{"reason":"unmatched topic"}`); m.Ref.Text() != "p1" {
		t.Fatalf("reply to %s", m.Ref)
	}
	l.terminated(t, ReasonJoinTimeout)
	if err := c.CompleteJoin(nil, nil); !errors.Is(err, ErrJoinNotPending) {
		t.Fatalf("CompleteJoin after the timeout: %v", err)
	}
	conn.none(t)
	if e.ep.Stats().Channels.Load() != 0 {
		t.Fatal("a timed-out join still counts")
	}
	if n := e.ep.Stats().JoinTimeouts.Load(); n != 1 {
		t.Fatalf("JoinTimeouts = %d, want 1", n)
	}
}

// CompleteJoin called before Join returns Pending (a backend that
// answered at once) is carried out when it returns.
func TestCompleteJoinBeforePendingReturns(t *testing.T) {
	r := &Router{}
	r.Handle("late:*", func(string) Channel { return eagerChannel{} })
	e := newTestEnv(t, EndpointConfig{Router: r})
	conn := &chanConn{frames: make(chan Frame, 16)}
	s := e.ep.Runtime().Open(conn, V2, Identity{})
	t.Cleanup(s.handleClose)
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	conn.expect(t, "late:a", EventReply, "ok", `{"at":"once"}`)
}

type eagerChannel struct{ relayChannel }

func (eagerChannel) Join(s *ChannelSocket, _ Payload) (any, error) {
	if err := s.CompleteJoin(map[string]string{"at": "once"}, nil); err != nil {
		panic(err)
	}
	return Pending(), nil
}

// A pending join of a topic with history recovers as a join answered at
// once: the late reply carries the position and "recovered", then the
// broadcasts the client missed, published while the join was pending
// included, then what was held.
func TestLateJoinRecovers(t *testing.T) {
	e, l, s, conn := lateEnv(t, EndpointConfig{})
	r := &Router{}
	r.History("late:*", pubsub.HistoryOptions{Size: 100, TTL: time.Minute})
	e.ps.SetHistoryPolicy(r.HistoryPolicy(nil))
	pub := func(n int) pubsub.Position {
		p, err := e.ps.PublishAt(context.Background(), &pubsub.Message{Topic: "late:a", Event: "new_msg", Payload: []byte(`{"n":` + strconv.Itoa(n) + `}`)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	since := pub(1)
	pub(2)
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{"since":"`+since.String()+`"}]`), false)
	c := l.pending(t)
	last := pub(3)
	conn.none(t)
	if err := c.CompleteJoin(nil, nil); err != nil {
		t.Fatal(err)
	}
	m := conn.expect(t, "late:a", EventReply, "ok", "")
	var reply struct {
		Position  string `json:"position"`
		Recovered bool   `json:"recovered"`
	}
	if err := json.Unmarshal(m.Payload, &reply); err != nil || reply.Position != last.String() || !reply.Recovered {
		t.Fatalf("reply %s (%v), want position %s recovered", m.Payload, err, last)
	}
	for _, n := range []string{`{"n":2}`, `{"n":3}`} {
		conn.expect(t, "late:a", "new_msg", "", n)
	}
	conn.expect(t, "late:a", "during_join", "", "")
	conn.expect(t, "late:a", "after_join", "", "")
	pub(4)
	conn.expect(t, "late:a", "new_msg", "", `{"n":4}`)
}

// Pushes a client sends to a pending join wait for its answer, up to
// maxEarlyPushes; one more is answered at once.
func TestPendingJoinBoundsWaitingPushes(t *testing.T) {
	_, l, s, conn := lateEnv(t, EndpointConfig{MaxMessagesPerSecond: -1})
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	c := l.pending(t)
	for i := range maxEarlyPushes + 1 {
		s.handleFrame([]byte(`["1","p`+strconv.Itoa(i)+`","late:a","ping",{}]`), false)
	}
	if m := conn.expect(t, "late:a", EventReply, "error", `{"reason":"join pending"}`); m.Ref.Text() != "p"+strconv.Itoa(maxEarlyPushes) {
		t.Fatalf("refused push %s", m.Ref)
	}
	conn.none(t)
	if err := c.CompleteJoin(nil, nil); err != nil {
		t.Fatal(err)
	}
	conn.expect(t, "late:a", EventReply, "ok", "{}")
	conn.expect(t, "late:a", "during_join", "", "")
	conn.expect(t, "late:a", "after_join", "", "")
	for i := range maxEarlyPushes {
		if m := conn.expect(t, "late:a", EventReply, "ok", `{"echo":"ping"}`); m.Ref.Text() != "p"+strconv.Itoa(i) {
			t.Fatalf("reply %d to %s", i, m.Ref)
		}
	}
}

// An answer given during Join is ignored when Join answers itself.
func TestCompleteJoinIgnoredWithoutPending(t *testing.T) {
	r := &Router{}
	r.Handle("late:*", func(string) Channel { return eagerSyncChannel{} })
	e := newTestEnv(t, EndpointConfig{Router: r})
	conn := &chanConn{frames: make(chan Frame, 16)}
	s := e.ep.Runtime().Open(conn, V2, Identity{})
	t.Cleanup(s.handleClose)
	s.handleFrame([]byte(`["1","1","late:a","phx_join",{}]`), false)
	conn.expect(t, "late:a", EventReply, "ok", `{"from":"join"}`)
	conn.none(t)
}

type eagerSyncChannel struct{ relayChannel }

func (eagerSyncChannel) Join(s *ChannelSocket, _ Payload) (any, error) {
	_ = s.CompleteJoin(nil, Refuse("never sent"))
	return map[string]string{"from": "join"}, nil
}
