package transport

import (
	"sync"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// The node-wide budget of message buffers (MaxMessageBuffers) and who
// gives way when it is spent.
//
// Refusing whoever asks when the budget is full would let anyone who
// keeps it full (sockets that each begin a message and never finish it,
// renewed as they time out) close every other socket that sends a message
// over the read buffer: one client would disconnect others. So a socket
// that needs buffer takes it back from the sockets holding the oldest
// unfinished messages, closing them, and is refused only when messages
// older than its own do not hold enough. A message sent at a normal speed
// is whole within milliseconds of its first frame and is rarely the
// oldest; to evict it an attacker has to renew the whole budget within
// that time, at the budget's size per message's lifetime in bandwidth.

// msgBudget is the handler's registry of messages in progress, oldest
// first, with the bytes each holds.
type msgBudget struct {
	mu sync.Mutex
	// head is the oldest message in progress, tail the newest; linked
	// through msgState.prev and next. Guarded by mu.
	head, tail *msgState
}

// begin registers m, a message starting now on c, as the newest holder.
// It charges nothing yet.
func (b *msgBudget) begin(c *wsConn, m *msgState, timeout time.Duration) {
	b.mu.Lock()
	m.c = c
	// Under mu, so that the list's order is the deadlines' order.
	m.deadline = int64(time.Since(monoEpoch) + timeout)
	m.prev, m.next = b.tail, nil
	if b.tail != nil {
		b.tail.next = m
	} else {
		b.head = m
	}
	b.tail = m
	m.linked = true
	b.mu.Unlock()
}

// unlinkLocked takes m out of the list.
func (b *msgBudget) unlinkLocked(m *msgState) {
	if m.prev != nil {
		m.prev.next = m.next
	} else {
		b.head = m.next
	}
	if m.next != nil {
		m.next.prev = m.prev
	} else {
		b.tail = m.prev
	}
	m.prev, m.next = nil, nil
	m.linked = false
}

// charge counts n more bytes of m's buffer in h's MessageBuffers. When
// they do not fit MaxMessageBuffers it evicts the holders of messages
// older than m, oldest first, as many as it takes for them to fit; when
// the messages older than m do not hold enough it evicts none and reports
// false (counted in MessageBuffersFull): m's socket must close. It reports
// false too for a message that was evicted meanwhile, whose socket is
// closing already.
func (h *WebSocketHandler) charge(m *msgState, n int) bool {
	b := &h.budget
	held := &h.stats.MessageBuffers
	b.mu.Lock()
	if !m.linked {
		b.mu.Unlock()
		return false // evicted
	}
	max := h.cfg.MaxMessageBuffers // under mu: tests change it (setBudget)
	over := held.Load() + int64(n) - max
	if max <= 0 || over <= 0 {
		held.Add(int64(n))
		m.charged += n
		b.mu.Unlock()
		return true
	}
	// Are there enough older bytes to take back?
	var enough *msgState // the last holder to evict
	var sum int64
	for o := b.head; o != nil && o != m; o = o.next {
		sum += int64(o.charged)
		if sum >= over {
			enough = o
			break
		}
	}
	if enough == nil {
		b.mu.Unlock()
		h.stats.MessageBuffersFull.Add(1)
		return false
	}
	var victims []*wsConn
	for {
		o := b.head
		b.unlinkLocked(o)
		held.Add(-int64(o.charged))
		victims = append(victims, o.c)
		if o == enough {
			break
		}
	}
	held.Add(int64(n))
	m.charged += n
	b.mu.Unlock()
	for _, v := range victims {
		h.stats.MessageBuffersFull.Add(1)
		v.evict()
	}
	return true
}

// uncharge ends m's share of the budget, unless it was evicted, which
// took its bytes out already.
func (h *WebSocketHandler) uncharge(m *msgState) {
	b := &h.budget
	b.mu.Lock()
	if m.linked {
		b.unlinkLocked(m)
		h.stats.MessageBuffers.Add(-int64(m.charged))
	}
	b.mu.Unlock()
}

// evict closes a socket whose message in progress lost its buffer to a
// newer one (msgBudget.charge), and wakes its reader: a reader blocked on
// the client (which need not send another byte) would otherwise keep the
// buffer, no longer counted, until the close deadline. Woken, it finds
// the close begun, lets the buffer go and then waits for the client's
// side of the close as any closing reader does (end).
func (c *wsConn) evict() {
	c.h.log.Debug("transport: message buffers full; closing the oldest message in progress", "remote", remote{c})
	c.mu.Lock()
	flush, read := c.closeLocked(closeBody(channels.CloseTryAgainLater, "message buffers full"), false)
	if !c.draining && c.nc != nil {
		// After closeLocked, which sets the close deadline: this comes
		// first. end resets it for the rest of the close. (A bare
		// connection's reader does not wait; should it attach to wait,
		// the attach wakes it as this does.)
		_ = c.nc.SetReadDeadline(time.Now())
	}
	c.mu.Unlock()
	c.startClose(flush, read)
}
