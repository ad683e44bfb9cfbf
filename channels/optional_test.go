package channels

import (
	"log/slog"
	"strings"
	"testing"
)

// misspelledOut means to intercept, but HandleOut takes an In.
type misspelledOut struct{ relayChannel }

func (misspelledOut) Intercepts() []string               { return []string{"x"} }
func (misspelledOut) HandleOut(s *ChannelSocket, out In) {}

// lowerAfterJoin means AfterJoin.
type lowerAfterJoin struct{ relayChannel }

func (lowerAfterJoin) Afterjoin(s *ChannelSocket) {}

// ptrAfterJoin has AfterJoin on the pointer; its factory returns a value.
type ptrAfterJoin struct{ relayChannel }

func (*ptrAfterJoin) AfterJoin(s *ChannelSocket) {}

// halfOut has Intercepts and no HandleOut at all.
type halfOut struct{ relayChannel }

func (halfOut) Intercepts() []string { return []string{"x"} }

// shortTerminate means Terminate, Phoenix's terminate/2 without the
// reason. Its own method hides relayChannel's.
type shortTerminate struct{ relayChannel }

func (shortTerminate) Terminate(s *ChannelSocket) {}

// rightOut implements Interceptor and AfterJoiner as meant.
type rightOut struct{ relayChannel }

func (rightOut) Intercepts() []string              { return []string{"x"} }
func (rightOut) HandleOut(s *ChannelSocket, o Out) {}
func (rightOut) AfterJoin(s *ChannelSocket)        {}

var (
	_ Interceptor = rightOut{}
	_ AfterJoiner = rightOut{}
)

// A channel type whose optional methods do not match their interface is
// logged once, at its first join; one whose methods match is not.
func TestNearMissOptionalMethodsAreLoggedOnce(t *testing.T) {
	r := &Router{}
	r.Handle("out:*", func(string) Channel { return misspelledOut{} })
	r.Handle("lower:*", func(string) Channel { return lowerAfterJoin{} })
	r.Handle("ptr:*", func(string) Channel { return ptrAfterJoin{} })
	r.Handle("half:*", func(string) Channel { return halfOut{} })
	r.Handle("right:*", func(string) Channel { return rightOut{} })
	r.Handle("term:*", func(string) Channel { return shortTerminate{} })
	e := newTestEnv(t, EndpointConfig{Router: r})
	var logs logBuffer
	e.ep.log = slog.New(slog.NewTextHandler(&logs, nil))
	s, conn := e.open(t, V2)
	for i, topic := range []string{"out:a", "out:b", "lower:a", "ptr:a", "half:a", "right:a", "term:a"} {
		ref := string(rune('1' + i))
		s.handleFrame([]byte(`["`+ref+`","`+ref+`","`+topic+`","phx_join",{}]`), false)
	}
	for _, m := range checkTextFrames(t, V2, conn.take()) {
		if m.Event == EventReply && m.Status != "ok" {
			t.Fatalf("join refused: %s", m.Payload)
		}
	}
	out := logs.String()
	for _, want := range []string{
		"method=HandleOut want=\"HandleOut(*channels.ChannelSocket, channels.Out)\"",
		"method=Afterjoin want=AfterJoin(*channels.ChannelSocket)",
		"type=channels.ptrAfterJoin interface=channels.AfterJoiner",
		"type=channels.halfOut has=Intercepts missing=HandleOut",
		"method=Terminate want=\"Terminate(*channels.ChannelSocket, channels.Reason)\"",
	} {
		if strings.Count(out, want) != 1 {
			t.Errorf("want %q logged once, got:\n%s", want, out)
		}
	}
	if strings.Contains(out, "method=Intercepts") {
		t.Errorf("a method with the right signature was warned about:\n%s", out)
	}
	if strings.Contains(out, "rightOut") {
		t.Errorf("a channel that implements its interfaces was warned about:\n%s", out)
	}
}
