package channels_test

import (
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
)

// holdConn is a HoldConn that logs, in order, the holds, the events of
// the frames sent and the releases.
type holdConn struct {
	mu       sync.Mutex
	log      []string
	released chan struct{}
}

func newHoldConn() *holdConn { return &holdConn{released: make(chan struct{}, 16)} }

func (c *holdConn) Send(f channels.Frame) error {
	m, err := channels.V2.Decode(f.Data, false)
	if err != nil {
		return err
	}
	c.add(m.Event)
	return nil
}

func (c *holdConn) Close(int, string) {}
func (c *holdConn) Hold()             { c.add("hold") }

func (c *holdConn) Release() {
	c.add("release")
	c.released <- struct{}{}
}

func (c *holdConn) add(s string) {
	c.mu.Lock()
	c.log = append(c.log, s)
	c.mu.Unlock()
}

func (c *holdConn) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.log
	c.log = nil
	return l
}

// afterChannel pushes "after" in AfterJoin, once wait (if set) lets it.
type afterChannel struct {
	histChannel
	wait func()
}

func (a *afterChannel) AfterJoin(s *channels.ChannelSocket) {
	if a.wait != nil {
		a.wait()
	}
	_ = s.Push("after", nil)
}

var _ channels.AfterJoiner = (*afterChannel)(nil)

func TestJoinHeldUntilAfterJoin(t *testing.T) {
	var slow func()
	e := newHistEnv(t, 10, func(topic string) channels.Channel {
		switch topic {
		case "plain:relay":
			return &histChannel{}
		case "plain:slow":
			return &afterChannel{wait: slow}
		}
		return &afterChannel{}
	}, nil)
	c := newHoldConn()
	s := openSocket(e.ep, c, channels.V2)
	t.Cleanup(s.HandleClose)
	check := func(what string, want ...string) {
		t.Helper()
		if got := c.take(); !slices.Equal(got, want) {
			t.Fatalf("%s: %q, want %q", what, got, want)
		}
	}

	// The reply and AfterJoin's push leave together, history or not.
	join(s, channels.V2, "plain:a", "1", `{}`)
	check("a join with AfterJoin", "hold", "phx_reply", "after", "release")
	join(s, channels.V2, "room:a", "2", `{}`)
	check("a join of a topic with history", "hold", "phx_reply", "after", "release")
	join(s, channels.V2, "plain:relay", "3", `{}`)
	check("a join without AfterJoin", "hold", "phx_reply", "release")

	// An AfterJoin that takes long lets the reply go after a while.
	slow = func() {
		select {
		case <-c.released:
		case <-time.After(5 * time.Second):
			t.Error("the hold was not released while AfterJoin ran")
		}
	}
	for len(c.released) > 0 {
		<-c.released
	}
	join(s, channels.V2, "plain:slow", "4", `{}`)
	check("a slow AfterJoin", "hold", "phx_reply", "release", "after")

	// A join that replays history waits for the client to take it: the
	// connection is not held.
	first := e.publish(t, "room:b", 1, 3)
	since := pubsub.Position{Epoch: first.Epoch, Offset: 1}
	join(s, channels.V2, "room:b", "5", `{"since":`+strconv.Quote(since.String())+`}`)
	check("a join that replays", "phx_reply", "new_msg", "new_msg", "after")
}
