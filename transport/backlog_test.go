package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
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

// Backlog tests need a queue that stays while the client reads nothing.
// How much of it the kernel takes meanwhile must not depend on timing:
// left alone, loopback's buffers grow to megabytes (the send buffer
// autotunes up to net.ipv4.tcp_wmem's maximum) as long as one waits, and
// a test that waited "long enough" for the queue to settle failed on a
// loaded machine. So dialBounded fixes the client's receive buffer and
// the server's send buffer at sockBuffer, and at most kernelFrames ever
// leave the queue of a client that reads nothing: both buffers as Linux
// sizes them (twice what is asked, for its bookkeeping), and for each a
// 64 KiB segment by which it may overshoot. A frame leaves the queue only
// when the whole write that carries it is taken (writers.go), so in fact
// far fewer do.
const (
	sockBuffer   = 32 << 10
	kernelFrames = (2*2*sockBuffer + 2*64<<10) / backlogFrame
)

// dialBounded connects a client to hs with the kernel's buffers bounded
// (above), and returns it and the server's socket.
func dialBounded(t *testing.T, hs *harness) (*client, *fakeSocket) {
	t.Helper()
	d := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := nc.(*net.TCPConn).SetReadBuffer(sockBuffer); err != nil {
			nc.Close()
			return nil, err
		}
		return nc, nil
	}}
	c := hs.dial(t, "vsn=2.0.0", d)
	sock := <-hs.ep.opened
	if err := setSendBuffer(sock.conn.(*wsConn), sockBuffer); err != nil {
		t.Fatalf("server's send buffer: %v", err)
	}
	return c, sock
}

// setSendBuffer sets the server side's send buffer, through nc or on the
// bare descriptor.
func setSendBuffer(c *wsConn, n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		return tc.SetWriteBuffer(n)
	}
	return setBareSendBuffer(c, n)
}

// fillQueue sends n numbered frames from next on, each without a
// refusal, to a client of dialBounded that reads nothing, and returns
// the next number. More than n-kernelFrames of them then stay queued,
// however long one waits, until the client reads.
func fillQueue(t *testing.T, bc channels.BacklogConn, next, n int) int {
	t.Helper()
	if n <= kernelFrames {
		t.Fatalf("fillQueue(%d): the kernel may take them all (kernelFrames %d)", n, kernelFrames)
	}
	for end := next + n; next < end; next++ {
		if err := bc.Send(channels.Frame{Data: numbered(next)}); err != nil {
			t.Fatalf("Send %d: %v", next, err)
		}
	}
	if f, _, _, _ := bc.Backlog(); f < n-kernelFrames {
		t.Fatalf("%d of %d frames queued: the kernel took more than kernelFrames (%d)", f, n, kernelFrames)
	}
	return next
}

// awaitBacklogWait returns once a WaitBacklog waits on c for its drain.
func awaitBacklogWait(t *testing.T, hs *harness, c *wsConn) {
	t.Helper()
	for deadline := time.Now().Add(waitLimit); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		hs.h.backlogs.mu.Lock()
		w := hs.h.backlogs.m[c]
		hs.h.backlogs.mu.Unlock()
		if w != nil {
			return
		}
	}
	t.Fatal("no WaitBacklog waits on the connection")
}

// TestWebSocketBacklogPaced: with a client that does not read,
// WaitBacklog waits; once it reads, the writer's drain wakes it. A sender
// that waits whenever the queue is half full then sends far more than the
// queue holds to a client that reads slowly, without one refusal, and
// the client gets every frame in order.
func TestWebSocketBacklogPaced(t *testing.T) {
	inReadModes(t, func(t *testing.T, m readMode) {
		const (
			maxQueue = 64
			mark     = maxQueue / 8 // below what stays queued (fillQueue)
		)
		hs := newHarness(t, m, WebSocketConfig{MaxQueue: maxQueue}, nil)
		c, sock := dialBounded(t, hs)
		bc := sock.conn.(channels.BacklogConn)
		if _, _, f, b := bc.Backlog(); f != maxQueue || b != DefaultMaxQueueBytes {
			t.Fatalf("limits %d, %d; want %d, %d", f, b, maxQueue, DefaultMaxQueueBytes)
		}

		next := fillQueue(t, bc, 0, maxQueue)
		if maxQueue-kernelFrames <= mark {
			t.Fatalf("mark %d: the kernel may take the queue down to it", mark)
		}
		// What is queued when WaitBacklog returns: nothing is sent
		// meanwhile, so the queue only falls after it.
		type wakeup struct {
			err    error
			frames int
		}
		waited := make(chan wakeup, 1)
		go func() {
			err := bc.WaitBacklog(context.Background(), mark, 1<<30)
			f, _, _, _ := bc.Backlog()
			waited <- wakeup{err, f}
		}()
		awaitBacklogWait(t, hs, sock.conn.(*wsConn))
		select {
		case w := <-waited:
			t.Fatalf("WaitBacklog returned %v while the client reads nothing", w.err)
		default:
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
		case w := <-waited:
			if w.err != nil {
				t.Fatalf("WaitBacklog: %v", w.err)
			}
			if w.frames > mark {
				t.Errorf("WaitBacklog returned with %d frames queued, want at most %d", w.frames, mark)
			}
		case <-time.After(waitLimit):
			t.Fatal("WaitBacklog not woken by the drain")
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
		_, sock := dialBounded(t, hs)
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
