package channels

import (
	"context"
	"testing"
)

// bareChannel has no Terminate: Phoenix's terminate/2 is optional, and so
// is Terminator. It tracks a presence on join so that its cleanup shows.
type bareChannel struct{}

func (bareChannel) Join(*ChannelSocket, Payload) (any, error) { return nil, nil }
func (bareChannel) HandleIn(*ChannelSocket, In) Result        { return Ok(nil) }
func (bareChannel) AfterJoin(s *ChannelSocket) {
	if err := s.Track("u1", nil); err != nil {
		panic(err)
	}
}

// endingChannel records the reason its Terminate gets.
type endingChannel struct {
	bareChannel
	reasons *[]Reason
}

func (c endingChannel) Terminate(_ *ChannelSocket, r Reason) { *c.reasons = append(*c.reasons, r) }

var _ Terminator = endingChannel{}

// assertEnded fails unless topic has no subscriber and no presence left,
// and the endpoint counts no joined channel.
func assertEnded(t *testing.T, e *testEnv, topic string) {
	t.Helper()
	if n := e.ps.Subscribers(topic); n != 0 {
		t.Errorf("%s: %d subscribers left", topic, n)
	}
	st, err := e.ep.cfg.Presence.List(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 0 {
		t.Errorf("%s: presences left: %v", topic, st)
	}
	if n := e.ep.Stats().Channels.Load(); n != 0 {
		t.Errorf("Channels = %d", n)
	}
}

// assertTracked fails unless topic has one subscriber and u1 present.
func assertTracked(t *testing.T, e *testEnv, topic string) {
	t.Helper()
	if n := e.ps.Subscribers(topic); n != 1 {
		t.Fatalf("%s: %d subscribers after join", topic, n)
	}
	st, err := e.ep.cfg.Presence.List(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st["u1"]; !ok {
		t.Fatalf("%s: u1 not present after join: %v", topic, st)
	}
}

// A channel without Terminate joins, leaves and is cleaned up like any
// other: phx_close for the leave, its subscription and presence gone, no
// crash counted; the same when the connection closes instead.
func TestChannelWithoutTerminate(t *testing.T) {
	r := &Router{}
	r.Handle("bare:*", func(string) Channel { return bareChannel{} })
	e := newTestEnv(t, EndpointConfig{Router: r})
	s, conn := e.open(t, V2)

	s.handleFrame([]byte(`["1","1","bare:a","phx_join",{}]`), false)
	assertTracked(t, e, "bare:a")
	s.handleFrame([]byte(`["1","2","bare:a","phx_leave",{}]`), false)
	var closed bool
	for _, m := range checkTextFrames(t, V2, conn.take()) {
		if m.Event == EventReply && m.Status != "ok" {
			t.Errorf("reply %s %s", m.Status, m.Payload)
		}
		if m.Event == EventClose && m.Topic == "bare:a" {
			closed = true
		}
	}
	if !closed {
		t.Error("no phx_close after phx_leave")
	}
	assertEnded(t, e, "bare:a")

	s.handleFrame([]byte(`["3","3","bare:b","phx_join",{}]`), false)
	assertTracked(t, e, "bare:b")
	s.handleClose()
	assertEnded(t, e, "bare:b")
	if n := e.ep.Stats().Crashes.Load(); n != 0 {
		t.Errorf("Crashes = %d", n)
	}
}

// A channel that has Terminate still gets it, once, with the reason.
func TestTerminatorGetsReason(t *testing.T) {
	var reasons []Reason
	r := &Router{}
	r.Handle("end:*", func(string) Channel { return endingChannel{reasons: &reasons} })
	e := newTestEnv(t, EndpointConfig{Router: r})
	s, _ := e.open(t, V2)

	s.handleFrame([]byte(`["1","1","end:a","phx_join",{}]`), false)
	s.handleFrame([]byte(`["1","2","end:a","phx_leave",{}]`), false)
	assertEnded(t, e, "end:a")
	s.handleFrame([]byte(`["3","3","end:b","phx_join",{}]`), false)
	s.handleClose()
	assertEnded(t, e, "end:b")
	if len(reasons) != 2 || reasons[0] != ReasonLeft || reasons[1] != ReasonClosed {
		t.Errorf("Terminate reasons %v, want [left closed]", reasons)
	}
}
