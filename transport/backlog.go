package transport

import (
	"context"
	"sync"

	"github.com/channelsd/channelsd/channels"
)

// Backlogs (channels.BacklogConn): what a connection has queued and not
// yet handed on, and a wait for it to fall that the drain itself wakes.
// The runtime paces a join's replay of history with it (PROTOCOL.md
// §12.5), so that a client that was closed as a slow consumer can catch
// up instead of overflowing its queue again on every rejoin.

var (
	_ channels.BacklogConn = (*wsConn)(nil)
	_ channels.BacklogConn = (*lpSession)(nil)
)

// backlogWait is what a connection's waiters wait for: the backlog at
// most frames and bytes. Waiters with different marks share one: the
// highest marks, so that it is woken no later than any of them wants;
// each checks its own marks again when woken.
type backlogWait struct {
	ch            chan struct{} // closed when the marks are reached or the connection closes
	frames, bytes int
}

func newBacklogWait(frames, bytes int) *backlogWait {
	return &backlogWait{ch: make(chan struct{}), frames: frames, bytes: bytes}
}

func (w *backlogWait) widen(frames, bytes int) {
	w.frames = max(w.frames, frames)
	w.bytes = max(w.bytes, bytes)
}

func (w *backlogWait) reached(frames, bytes int) bool {
	return frames <= w.frames && bytes <= w.bytes
}

// waitBacklog is WaitBacklog for both transports: check reports whether
// the connection is closing and, if not, the wait to use when the
// backlog is above the marks (nil: it is not).
func waitBacklog(ctx context.Context, check func() (closing bool, w *backlogWait)) error {
	for {
		closing, w := check()
		switch {
		case closing:
			return channels.ErrConnClosed
		case w == nil:
			return nil
		}
		select {
		case <-w.ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// backlogWaits holds the waits of a WebSocket handler's connections. A
// wait per connection would grow every wsConn, which is most of an idle
// connection's memory (TestIdleFootprint); a flag in the struct's
// padding (wsConn.backlogWatched) tells the write path when to look here.
type backlogWaits struct {
	mu sync.Mutex // a leaf, taken under wsConn.mu (locksordering.txt)
	m  map[*wsConn]*backlogWait
}

// watch returns c's wait, widened to the marks. Called with c.mu held.
func (b *backlogWaits) watch(c *wsConn, frames, bytes int) *backlogWait {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.m[c]; w != nil {
		w.widen(frames, bytes)
		return w
	}
	if b.m == nil {
		b.m = make(map[*wsConn]*backlogWait)
	}
	w := newBacklogWait(frames, bytes)
	b.m[c] = w
	return w
}

// Backlog implements channels.BacklogConn: the frames queued or being
// written, and the queue's bounds (MaxQueue, MaxQueueBytes).
func (c *wsConn) Backlog() (frames, bytes, maxFrames, maxBytes int) {
	c.mu.Lock()
	frames, bytes = int(c.nFrames), c.nBytes
	c.mu.Unlock()
	return frames, bytes, c.h.cfg.MaxQueue, c.h.cfg.MaxQueueBytes
}

// WaitBacklog implements channels.BacklogConn. The writer that finishes a
// write (wrote) and every path that begins a close wake it.
func (c *wsConn) WaitBacklog(ctx context.Context, frames, bytes int) error {
	return waitBacklog(ctx, func() (bool, *backlogWait) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closing {
			return true, nil
		}
		if int(c.nFrames) <= frames && c.nBytes <= bytes {
			return false, nil
		}
		c.backlogWatched = true
		return false, c.h.backlogs.watch(c, frames, bytes)
	})
}

// wakeBacklogLocked wakes c's waiters when the backlog has fallen to
// their marks or the connection is closing. Called with c.mu held, after
// the counts or closing changed, and only when c.backlogWatched.
func (c *wsConn) wakeBacklogLocked() {
	b := &c.h.backlogs
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.m[c]
	if w == nil {
		c.backlogWatched = false
		return
	}
	if !c.closing && !w.reached(int(c.nFrames), c.nBytes) {
		return
	}
	delete(b.m, c)
	c.backlogWatched = false
	close(w.ch)
}

// Backlog implements channels.BacklogConn: the messages buffered for the
// next poll, their bytes in a poll answer, and the buffer's bounds
// (MaxBuffered, MaxBufferedBytes).
func (s *lpSession) Backlog() (frames, bytes, maxFrames, maxBytes int) {
	s.mu.Lock()
	frames, bytes = len(s.buf), s.bufBytes
	s.mu.Unlock()
	return frames, bytes, s.h.cfg.MaxBuffered, s.h.cfg.MaxBufferedBytes
}

// WaitBacklog implements channels.BacklogConn. A poll answer that takes
// messages (takeLocked) and the session's end wake it.
func (s *lpSession) WaitBacklog(ctx context.Context, frames, bytes int) error {
	return waitBacklog(ctx, func() (bool, *backlogWait) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.ended {
			return true, nil
		}
		if len(s.buf) <= frames && s.bufBytes <= bytes {
			return false, nil
		}
		if s.drain == nil {
			s.drain = newBacklogWait(frames, bytes)
		} else {
			s.drain.widen(frames, bytes)
		}
		return false, s.drain
	})
}

// wakeBacklogLocked wakes s's waiters when the buffer has fallen to
// their marks or the session has ended. Called with s.mu held.
func (s *lpSession) wakeBacklogLocked() {
	if w := s.drain; w != nil && (s.ended || w.reached(len(s.buf), s.bufBytes)) {
		s.drain = nil
		close(w.ch)
	}
}
