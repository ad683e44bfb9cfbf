package transport

import (
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// Holds (channels.HoldConn): what is sent while a connection is held
// stays queued, in order, and leaves together on the last Release.

func TestWebSocketHold(t *testing.T) { inReadModes(t, testWebSocketHold) }

func testWebSocketHold(t *testing.T, m readMode) {
	_, c, s := echoHarness(t, m, WebSocketConfig{})
	conn := s.conn.(*wsConn)
	send := func(text string) {
		t.Helper()
		if err := conn.Send(channels.Frame{Data: []byte(text)}); err != nil {
			t.Fatal(err)
		}
	}
	queued := func() int {
		frames, _, _, _ := conn.Backlog()
		return frames
	}

	conn.Hold()
	conn.Hold() // holds nest
	send("reply")
	send("state")
	conn.mu.Lock()
	asked := conn.flushing
	conn.mu.Unlock()
	if n := queued(); n != 2 || asked {
		t.Fatalf("held: %d frames queued (want both), a writer asked for: %v", n, asked)
	}
	// A writer that had the connection in its FIFO before the hold
	// leaves the queue as it is.
	conn.mu.Lock()
	conn.flushing = true
	conn.mu.Unlock()
	if !conn.writeQueued(writerBufPool.Get().(*writerBuf)) {
		t.Fatal("writeQueued gave its buffer away")
	}
	conn.mu.Lock()
	flushing := conn.flushing
	conn.mu.Unlock()
	if n := queued(); n != 2 || flushing {
		t.Fatalf("a writer on a held connection: %d frames queued (want 2), flushing %v", n, flushing)
	}
	conn.Release()
	if n := queued(); n != 2 {
		t.Fatalf("after the inner Release: %d frames queued, want 2", n)
	}
	send("diff")
	conn.Release()
	c.expectFrame(ws.OpText, "reply")
	c.expectFrame(ws.OpText, "state")
	c.expectFrame(ws.OpText, "diff")

	// Unheld, frames go out as ever; an unpaired Release does nothing.
	conn.Release()
	send("after")
	c.expectFrame(ws.OpText, "after")

	// A close is never held: what was queued goes out, then the close.
	conn.Hold()
	send("last")
	conn.Close(channels.CloseGoingAway, "bye")
	c.expectFrame(ws.OpText, "last")
	c.expectClose(channels.CloseGoingAway)
	conn.Release()
}

func TestLongPollHold(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{Window: waitLimit}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	sess := sock.conn.(*lpSession)
	send := func(text string) {
		t.Helper()
		if err := sess.Send(channels.Frame{Data: []byte(text)}); err != nil {
			t.Fatal(err)
		}
	}
	poll := func(tok string) chan lpResp {
		done := make(chan lpResp, 1)
		go func() { done <- hs.get(t, lpTokenQuery(tok)) }()
		return done
	}
	answer := func(done chan lpResp, want ...string) string {
		t.Helper()
		select {
		case r := <-done:
			if r.Status != 200 || len(r.msgs()) != len(want) {
				t.Fatalf("poll answered %s, want %q", r.Raw, want)
			}
			for i, m := range r.msgs() {
				if m != want[i] {
					t.Fatalf("poll answered %s, want %q", r.Raw, want)
				}
			}
			return r.token(t)
		case <-time.After(waitLimit / 2):
			t.Fatal("the poll was not answered on Release")
		}
		return ""
	}

	// A waiting poll is not woken while held, and gets both on Release.
	done := poll(tok)
	w := hs.awaitWaiting(t, sock)
	sess.Hold()
	send("reply")
	if len(w.ch) != 0 {
		t.Fatal("a held session woke its poll")
	}
	send("state")
	sess.Release()
	tok = answer(done, "reply", "state")

	// A poll that comes while held, with messages buffered, waits too.
	sess.Hold()
	send("a")
	done = poll(tok)
	hs.awaitWaiting(t, sock)
	send("b")
	sess.Release()
	answer(done, "a", "b")
}
