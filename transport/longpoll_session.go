package transport

import (
	"net/netip"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// Sessions: the outbound buffer, expiry and ending.

// lpSession is one long-poll session: the socket's Conn, an outbound
// buffer of encoded text frames and at most one waiting poll. Its expiry
// is one time.AfterFunc timer, re-armed (not reset) when it fires early.
type lpSession struct {
	h    *LongPollHandler
	id   [lpSessionIDLen]byte
	addr netip.Prefix // the client address it counts against (MaxSessionsPerAddr)

	// frameMu serialises HandleFrame (POSTs) and HandleClose.
	frameMu sync.Mutex

	mu       sync.Mutex
	sock     Socket  // set once Open returns; guarded by mu
	buf      []lpMsg // guarded by mu
	bufBytes int     // what buf takes in a poll answer; guarded by mu
	waiter   *lpWaiter
	drain    *backlogWait // WaitBacklog's (backlog.go); guarded by mu
	lastGet  time.Time
	timer    *time.Timer
	ended    bool
	closing  bool // HandleClose started
	// holds counts the runtime's Holds not yet released (Hold): while
	// above zero, a waiting poll is not woken and a new one waits.
	// Guarded by mu.
	holds uint8
}

// lpMsg is one buffered text frame and the bytes it takes in a poll
// answer (jsonStringLen), which bound both the buffer and an answer.
type lpMsg struct {
	data []byte
	n    int
}

// lpWaiter is one waiting GET.
type lpWaiter struct {
	ch       chan struct{} // capacity 1
	replaced bool          // guarded by the session's mu
}

func (w *lpWaiter) wake() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// Send implements channels.Conn: it buffers f for the next poll and never
// blocks. Binary frames have no long-poll encoding (§2.4): they are
// dropped and counted, and the socket carries on.
func (s *lpSession) Send(f channels.Frame) error {
	if f.Binary {
		s.h.stats.DroppedBinary.Add(1)
		s.h.log.Debug("transport: binary frame dropped for a long-poll session")
		s.mu.Lock()
		ended := s.ended
		s.mu.Unlock()
		if ended {
			return channels.ErrConnClosed
		}
		return nil
	}
	m := lpMsg{data: f.Data, n: jsonStringLen(f.Data) + 1} // and its comma
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return channels.ErrConnClosed
	}
	cfg := &s.h.cfg
	if len(s.buf) > 0 && (len(s.buf) >= cfg.MaxBuffered || s.bufBytes+m.n > cfg.MaxBufferedBytes) {
		// A client that does not poll as fast as it is sent to must not
		// grow our memory, nor lose messages without knowing: as a
		// WebSocket slow consumer is closed, the session ends, and the
		// client's next request gets {"status":410}, on which phoenix.js
		// reconnects and rejoins. (A frame alone may exceed the bytes,
		// as on WebSocket: an empty buffer takes it.)
		byCount := len(s.buf) >= cfg.MaxBuffered
		s.mu.Unlock()
		if byCount {
			s.h.stats.Overflowed.Add(1)
		} else {
			s.h.stats.OverflowedBytes.Add(1)
		}
		s.h.log.Debug("transport: long-poll session ended as a slow consumer", "by_count", byCount)
		s.end("slow consumer")
		return channels.ErrSlowConsumer
	}
	s.buf = append(s.buf, m)
	s.bufBytes += m.n
	if s.waiter != nil && s.holds == 0 {
		s.waiter.wake()
	}
	s.mu.Unlock()
	return nil
}

var _ channels.HoldConn = (*lpSession)(nil)

// Hold keeps what Send buffers from now on from answering a poll until
// the matching Release (channels.HoldConn): a join's reply and the
// presence_state after it then reach the client in one poll answer
// instead of two round trips. A poll's window still bounds the wait.
func (s *lpSession) Hold() {
	s.mu.Lock()
	s.holds++
	s.mu.Unlock()
}

// Release ends a Hold; the last one wakes the waiting poll if anything
// is buffered.
func (s *lpSession) Release() {
	s.mu.Lock()
	if s.holds > 0 {
		s.holds--
		if s.holds == 0 && len(s.buf) > 0 && s.waiter != nil {
			s.waiter.wake()
		}
	}
	s.mu.Unlock()
}

// Close implements channels.Conn: the session ends (later requests get
// 410) and the socket gets HandleClose. Long-poll has no close frame; the
// code is only logged.
func (s *lpSession) Close(code int, reason string) {
	s.h.log.Debug("transport: long-poll session closed by the server", "code", code, "reason", reason)
	s.end("closed: " + strconv.Itoa(code))
}

// takeLocked takes the buffered messages that fit in an answer of max
// bytes, oldest first, and at least one: a message larger than max goes
// alone. The rest stays buffered for the next poll.
func (s *lpSession) takeLocked(max int) []lpMsg {
	n, size := 0, 0
	for n < len(s.buf) && (n == 0 || size+s.buf[n].n <= max) {
		size += s.buf[n].n
		n++
	}
	msgs := s.buf[:n:n]
	if n == len(s.buf) {
		s.buf = nil
	} else {
		// A fresh array for the rest, so that the answer's messages are
		// not kept alive by the buffer nor the buffer's by the answer.
		s.buf = append([]lpMsg(nil), s.buf[n:]...)
	}
	s.bufBytes -= size
	s.h.stats.MessagesOut.Add(uint64(n))
	s.wakeBacklogLocked()
	return msgs
}

// live returns the socket of a session that has not ended, else nil.
func (s *lpSession) live() Socket {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil
	}
	return s.sock
}

// expire is the session timer's function.
func (s *lpSession) expire() {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	timeout := s.h.cfg.SessionTimeout
	if s.waiter != nil {
		s.timer.Reset(timeout)
		s.mu.Unlock()
		return
	}
	if left := timeout - time.Since(s.lastGet); left > 0 {
		s.timer.Reset(left)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.h.stats.Expired.Add(1)
	s.end("session timeout")
}

// end ends the session once: it leaves the table, its poll is woken, its
// buffer dropped, and HandleClose runs in a goroutine of its own (Close
// may be called with the socket's locks held, which HandleClose takes).
func (s *lpSession) end(why string) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	s.buf, s.bufBytes = nil, 0
	s.wakeBacklogLocked()
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.waiter != nil {
		s.waiter.wake()
	}
	hasSock := s.sock != nil
	s.mu.Unlock()

	h := s.h
	h.mu.Lock()
	if h.sessions[s.id] == s {
		delete(h.sessions, s.id)
		if h.perAddr[s.addr]--; h.perAddr[s.addr] <= 0 {
			delete(h.perAddr, s.addr)
		}
	}
	h.mu.Unlock()
	h.stats.Open.Add(-1)
	h.cfg.Sockets.release()
	h.log.Debug("transport: long-poll session ended", "why", why)
	if hasSock {
		s.startHandleClose()
	}
}

// startHandleClose calls the socket's HandleClose, exactly once, after
// any POST in progress, and then ends the handler's count of the session
// (taken when open put it in the table).
func (s *lpSession) startHandleClose() {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.closing = true
	sock := s.sock
	s.mu.Unlock()
	go func() {
		defer s.h.bg.Done()
		s.frameMu.Lock()
		defer s.frameMu.Unlock()
		// Nothing above this goroutine would catch a panic: the node
		// would stop.
		defer func() {
			if v := recover(); v != nil {
				s.h.stats.Panics.Add(1)
				s.h.log.Error("transport: panic in a long-poll session's HandleClose", "panic", v, "stack", string(debug.Stack()))
			}
		}()
		sock.HandleClose()
	}()
}
