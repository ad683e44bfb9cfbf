package channels_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
)

// slowConn is a Conn with a bounded queue that its client drains at its
// own pace (drain), as a transport's is: a Send that finds it full is
// refused and the conn closed, as a slow consumer's. It implements
// channels.BacklogConn.
type slowConn struct {
	mu        sync.Mutex
	queue     []channels.Frame
	out       []channels.Frame // what the client took, in order
	maxFrames int
	refused   int
	waits     int // WaitBacklogs that had to wait
	maxSeen   int // the deepest the queue got
	closed    bool
	drained   chan struct{} // closed and replaced by every drain and by the close
	first     chan struct{} // closed by the first Send
}

func newSlowConn(maxFrames int) *slowConn {
	return &slowConn{maxFrames: maxFrames, drained: make(chan struct{}), first: make(chan struct{})}
}

func (c *slowConn) Send(f channels.Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return channels.ErrConnClosed
	}
	if len(c.queue) >= c.maxFrames {
		c.refused++
		c.closeLocked()
		return channels.ErrSlowConsumer
	}
	if len(c.queue) == 0 && len(c.out) == 0 {
		close(c.first)
	}
	c.queue = append(c.queue, f)
	c.maxSeen = max(c.maxSeen, len(c.queue))
	return nil
}

func (c *slowConn) closeLocked() {
	if !c.closed {
		c.closed = true
		close(c.drained)
	}
}

func (c *slowConn) Close(int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
}

func (c *slowConn) Backlog() (frames, bytes, maxFrames, maxBytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.queue {
		bytes += len(f.Data)
	}
	return len(c.queue), bytes, c.maxFrames, 1 << 30
}

func (c *slowConn) WaitBacklog(ctx context.Context, frames, bytes int) error {
	counted := false
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return channels.ErrConnClosed
		}
		n := 0
		for _, f := range c.queue {
			n += len(f.Data)
		}
		if len(c.queue) <= frames && n <= bytes {
			c.mu.Unlock()
			return nil
		}
		if !counted {
			c.waits++
			counted = true
		}
		ch := c.drained
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// drain has the client take up to n frames; it reports how many it took.
func (c *slowConn) drain(n int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n = min(n, len(c.queue))
	c.out = append(c.out, c.queue[:n]...)
	c.queue = append(c.queue[:0:0], c.queue[n:]...)
	if n > 0 && !c.closed {
		close(c.drained)
		c.drained = make(chan struct{})
	}
	return n
}

// TestReplayPaced recovers 5,000 missed broadcasts through a 1,024-frame
// queue that its client drains slowly, while the topic goes on with live
// broadcasts: every broadcast arrives once, in order, the live ones after
// the replay, and the queue never refuses a frame.
func TestReplayPaced(t *testing.T) {
	const (
		missed = 5000
		live   = 600 // more than the replay holds (a quarter of the queue): some are read back from the history
		queue  = 1024
	)
	e := newHistEnv(t, 10000, relay, nil)
	since := e.publish(t, "room:a", 1, 1)
	e.publish(t, "room:a", 2, missed)
	c := newSlowConn(queue)
	s := openSocket(e.ep, c, channels.V2)
	t.Cleanup(s.HandleClose)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		// The client: 32 frames every 100 µs once the replay has
		// filled the queue, about a fifth of a second for the whole
		// recovery; the replay itself would queue it all at once.
		defer wg.Done()
		tick := time.NewTicker(100 * time.Microsecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				// Nothing taken until the replay has had to wait: on a
				// loaded machine a client draining from the start may
				// outrun the replay, which then never needs to pace.
				c.mu.Lock()
				waited := c.waits > 0
				c.mu.Unlock()
				if waited {
					c.drain(32)
				}
			}
		}
	}()
	go func() {
		// Live broadcasts from when the reply is out, during the replay.
		defer wg.Done()
		select {
		case <-c.first:
		case <-time.After(10 * time.Second):
			t.Error("no join reply")
			return
		}
		for i := missed + 2; i < missed+2+live; i++ {
			if _, err := e.ps.PublishAt(context.Background(), &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":` + strconv.Itoa(i) + `}`)}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	join(s, channels.V2, "room:a", "1", `{"since":"`+since.String()+`"}`)
	// The live publisher is done within the deadline; then the client
	// takes what is left.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	deadline := time.After(20 * time.Second)
	want := 1 + missed + live
	for {
		c.mu.Lock()
		n := len(c.out) + len(c.queue)
		c.mu.Unlock()
		if n >= want {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("%d frames after 20 s, want %d", n, want)
		case <-time.After(time.Millisecond):
		}
	}
	close(stop)
	<-done
	for c.drain(queue) > 0 {
	}

	c.mu.Lock()
	out, refused, waits, maxSeen, closed := c.out, c.refused, c.waits, c.maxSeen, c.closed
	c.mu.Unlock()
	if refused != 0 || closed {
		t.Fatalf("the queue refused %d frames (closed %v): the replay was not paced", refused, closed)
	}
	if waits == 0 {
		t.Errorf("the replay never waited for the client, deepest queue %d", maxSeen)
	}
	ms := decode(t, channels.V2, out)
	resp := joinReply(t, ms)
	if resp["recovered"] != true {
		t.Errorf("reply %v", resp)
	}
	// broadcastNs fails on a repeated or skipped position.
	ns, _ := broadcastNs(t, ms[1:])
	if !equalInts(ns, seq(2, missed+1+live)) {
		t.Fatalf("received %d broadcasts (%v ... %v), want 2..%d once each, in order", len(ns), ns[:min(5, len(ns))], ns[max(0, len(ns)-5):], missed+1+live)
	}
	st := e.ep.Stats()
	if st.ReplaysCut.Load() != 0 || st.HistoryGaps.Load() != 0 || st.SlowConsumers.Load() != 0 {
		t.Errorf("ReplaysCut %d, HistoryGaps %d, SlowConsumers %d; want 0", st.ReplaysCut.Load(), st.HistoryGaps.Load(), st.SlowConsumers.Load())
	}
	t.Logf("deepest queue %d of %d; the replay waited %d times", maxSeen, queue, waits)
}

// TestReplayConnClosed: a connection that closes while its replay waits
// for the client ends the replay at once, without frames; the socket's
// close then ends the channel.
func TestReplayConnClosed(t *testing.T) {
	ch := &histChannel{terminated: make(chan channels.Reason, 1)}
	e := newHistEnv(t, 5000, func(string) channels.Channel { return ch }, nil)
	since := e.publish(t, "room:a", 1, 1)
	e.publish(t, "room:a", 2, 3000)
	c := newSlowConn(1024) // never drained
	s := openSocket(e.ep, c, channels.V2)
	go func() {
		<-c.first
		c.Close(channels.ClosePolicy, "gone")
	}()
	join(s, channels.V2, "room:a", "1", `{"since":"`+since.String()+`"}`)
	s.HandleClose()
	select {
	case r := <-ch.terminated:
		if r != channels.ReasonClosed {
			t.Errorf("terminated with %q, want %q", r, channels.ReasonClosed)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the channel never ended")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refused != 0 || len(c.queue) > 1024 {
		t.Errorf("refused %d, queued %d", c.refused, len(c.queue))
	}
	if st := e.ep.Stats(); st.ReplaysCut.Load() != 0 {
		t.Errorf("ReplaysCut %d, want 0: a closing connection is not a cut replay", st.ReplaysCut.Load())
	}
}

// TestReplayHeldPushesOverflow: pushes that pile up while the replay
// waits cannot be read back from the history; past their bound the replay
// is cut with phx_error rather than the socket closed, and the channel
// ends with history_gap.
func TestReplayHeldPushesOverflow(t *testing.T) {
	ch := &histChannel{joined: make(chan *channels.ChannelSocket, 1), terminated: make(chan channels.Reason, 1)}
	e := newHistEnv(t, 5000, func(string) channels.Channel { return ch }, nil)
	since := e.publish(t, "room:a", 1, 1)
	e.publish(t, "room:a", 2, 3000)
	c := newSlowConn(64)
	s := openSocket(e.ep, c, channels.V2)
	t.Cleanup(s.HandleClose)
	pushed := make(chan struct{})
	go func() {
		defer close(pushed)
		cs := <-ch.joined
		<-c.first
		// 64/4 = 16 frames held at most; pushes alone past half of it
		// cut the replay.
		for range 20 {
			_ = cs.Push("note", nil)
		}
		for c.drain(64) > 0 { // let the replay go on to see the overflow
		}
	}()
	join(s, channels.V2, "room:a", "1", `{"since":"`+since.String()+`"}`)
	<-pushed
	select {
	case r := <-ch.terminated:
		if r != channels.ReasonHistoryGap {
			t.Errorf("terminated with %q, want %q", r, channels.ReasonHistoryGap)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the channel never ended")
	}
	for c.drain(64) > 0 {
	}
	c.mu.Lock()
	out, refused := c.out, c.refused
	c.mu.Unlock()
	if refused != 0 {
		t.Fatalf("the queue refused %d frames", refused)
	}
	ms := decode(t, channels.V2, out)
	if last := ms[len(ms)-1]; last.Event != channels.EventError || string(last.Payload) != `{"reason":"history_gap"}` {
		t.Errorf("last frame %s, want phx_error", last.raw)
	}
	for _, m := range ms {
		if m.Event == "note" {
			t.Errorf("a held push went out after the cut: %s", m.raw)
		}
	}
	if st := e.ep.Stats(); st.ReplaysCut.Load() != 1 {
		t.Errorf("ReplaysCut %d, want 1", st.ReplaysCut.Load())
	}
}
