package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// Backlog and WaitBacklog (backlog.go, channels.BacklogConn).

const backlogFrame = 16 << 10 // big enough for loopback's buffers to fill

func numbered(i int) []byte {
	b := bytes.Repeat([]byte{'x'}, backlogFrame)
	copy(b, fmt.Sprintf("%08d", i))
	return b
}

// fillQueue sends numbered frames from next on, without a refusal, until
// the connection's queue holds at least want frames and stays above half
// of that for a while: the client does not read, so the kernel's buffers
// must fill before the queue stays. It returns the next number.
func fillQueue(t *testing.T, bc channels.BacklogConn, next, want int) int {
	t.Helper()
	for limit := next + 8000; next < limit; {
		if f, _, _, _ := bc.Backlog(); f < want {
			if err := bc.Send(channels.Frame{Data: numbered(next)}); err != nil {
				t.Fatalf("Send %d: %v", next, err)
			}
			next++
			continue
		}
		// A probe, not synchronisation: a writer still draining into
		// the kernel brings the queue down within this time.
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := bc.WaitBacklog(ctx, want/2, 1<<30)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return next
		}
		if err != nil {
			t.Fatalf("WaitBacklog while filling: %v", err)
		}
	}
	t.Fatalf("the queue never stayed at %d frames", want)
	return next
}

// TestWebSocketBacklogPaced: with a client that does not read,
// WaitBacklog waits; once it reads, the writer's drain wakes it. A sender
// that waits whenever the queue is half full then sends far more than the
// queue holds to a client that reads slowly, without one refusal, and
// the client gets every frame in order.
func TestWebSocketBacklogPaced(t *testing.T) {
	inReadModes(t, func(t *testing.T, m readMode) {
		const maxQueue = 64
		hs := newHarness(t, m, WebSocketConfig{MaxQueue: maxQueue}, nil)
		c := hs.dial(t, "vsn=2.0.0", ws.Dialer{})
		sock := <-hs.ep.opened
		bc := sock.conn.(channels.BacklogConn)
		if _, _, f, b := bc.Backlog(); f != maxQueue || b != DefaultMaxQueueBytes {
			t.Fatalf("limits %d, %d; want %d, %d", f, b, maxQueue, DefaultMaxQueueBytes)
		}

		next := fillQueue(t, bc, 0, maxQueue*3/4)
		waited := make(chan error, 1)
		go func() { waited <- bc.WaitBacklog(context.Background(), maxQueue/8, 1<<30) }()
		select {
		case err := <-waited:
			t.Fatalf("WaitBacklog returned %v while the client reads nothing", err)
		case <-time.After(20 * time.Millisecond):
		}

		const total = 2000
		got := make(chan error, 1)
		go func() {
			// The client: every frame, in order, pausing now and then.
			for i := 0; i < total; i++ {
				h, p, err := c.tryReadFrame()
				if err != nil {
					got <- fmt.Errorf("frame %d: %v", i, err)
					return
				}
				if h.OpCode != ws.OpText || !bytes.Equal(p, numbered(i)) {
					got <- fmt.Errorf("frame %d: opcode %d, %.8q", i, h.OpCode, p)
					return
				}
				if i%200 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			got <- nil
		}()
		select {
		case err := <-waited:
			if err != nil {
				t.Fatalf("WaitBacklog: %v", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("WaitBacklog not woken by the drain")
		}
		if f, _, _, _ := bc.Backlog(); f > maxQueue/8 {
			t.Errorf("WaitBacklog returned with %d frames queued, want at most %d", f, maxQueue/8)
		}

		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		waits := 0
		for ; next < total; next++ {
			if f, _, _, _ := bc.Backlog(); 2*f >= maxQueue {
				waits++
				if err := bc.WaitBacklog(ctx, maxQueue/4, 1<<30); err != nil {
					t.Fatalf("WaitBacklog at frame %d: %v", next, err)
				}
			}
			if err := bc.Send(channels.Frame{Data: numbered(next)}); err != nil {
				t.Fatalf("Send %d: %v", next, err)
			}
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if hs.h.stats.SlowConsumers.Load() != 0 {
			t.Error("closed as a slow consumer")
		}
		t.Logf("paced sender waited %d times", waits)
	})
}

// TestWebSocketBacklogWaitEnds: WaitBacklog returns ErrConnClosed when the
// connection closes under it, at once on a closed one, and ctx's error
// when ctx ends first.
func TestWebSocketBacklogWaitEnds(t *testing.T) {
	inReadModes(t, func(t *testing.T, m readMode) {
		hs := newHarness(t, m, WebSocketConfig{MaxQueue: 64}, nil)
		_ = hs.dial(t, "vsn=2.0.0", ws.Dialer{})
		sock := <-hs.ep.opened
		bc := sock.conn.(channels.BacklogConn)
		fillQueue(t, bc, 0, 32)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		if err := bc.WaitBacklog(ctx, 0, 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitBacklog with an ending ctx: %v", err)
		}
		waited := make(chan error, 1)
		go func() { waited <- bc.WaitBacklog(context.Background(), 0, 0) }()
		bc.Close(channels.CloseGoingAway, "bye")
		select {
		case err := <-waited:
			if !errors.Is(err, channels.ErrConnClosed) {
				t.Fatalf("WaitBacklog on a closing connection: %v", err)
			}
		case <-time.After(waitLimit):
			t.Fatal("WaitBacklog not woken by the close")
		}
		if err := bc.WaitBacklog(context.Background(), 1<<20, 1<<30); !errors.Is(err, channels.ErrConnClosed) {
			t.Fatalf("WaitBacklog after the close: %v", err)
		}
		hs.h.backlogs.mu.Lock()
		n := len(hs.h.backlogs.m)
		hs.h.backlogs.mu.Unlock()
		if n != 0 {
			t.Errorf("%d waits left in the handler's table", n)
		}
	})
}

// TestLongPollBacklog: a session's backlog is its buffer; a poll that
// takes it wakes WaitBacklog, and the session's end ends the wait.
func TestLongPollBacklog(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{MaxBuffered: 10}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	bc := sock.conn.(channels.BacklogConn)
	var want []string
	for i := range 10 {
		want = append(want, fmt.Sprintf(`["%d"]`, i))
		if err := bc.Send(channels.Frame{Data: []byte(want[i])}); err != nil {
			t.Fatal(err)
		}
	}
	if f, b, mf, mb := bc.Backlog(); f != 10 || b <= 0 || mf != 10 || mb != DefaultLongPollMaxBufferedBytes {
		t.Fatalf("Backlog %d, %d, %d, %d", f, b, mf, mb)
	}
	waited := make(chan error, 1)
	go func() { waited <- bc.WaitBacklog(context.Background(), 2, 1<<30) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitBacklog returned %v before any poll", err)
	case <-time.After(20 * time.Millisecond):
	}
	r := hs.get(t, lpTokenQuery(tok))
	if len(r.msgs()) != 10 {
		t.Fatalf("poll: %s", r.Raw)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("WaitBacklog not woken by the poll")
	}
	for i := range 10 {
		_ = bc.Send(channels.Frame{Data: []byte(want[i])})
	}
	go func() { waited <- bc.WaitBacklog(context.Background(), 0, 0) }()
	bc.Close(channels.CloseGoingAway, "bye")
	select {
	case err := <-waited:
		if !errors.Is(err, channels.ErrConnClosed) {
			t.Fatalf("WaitBacklog on an ended session: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("WaitBacklog not woken by the end")
	}
}
