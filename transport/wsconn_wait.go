package transport

import (
	"errors"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// How a wsConn waits for its next frame without a goroutine: arming it in
// the reactor's poller, claiming its read side back, and the idle sweep.

// start begins reading a new connection: it arms it in the reactor, or
// starts a reader goroutine for bytes that came with the handshake, for a
// connection already closing (Open may close it) or without a reactor.
func (c *wsConn) start() {
	if c.r == nil {
		go c.readLoop()
		return
	}
	if c.pending != nil {
		go c.readReady()
		return
	}
	switch c.arm() {
	case armClosing:
		go c.readReady() // finds the close begun, drains and ends
	case armParked:
		go c.readLoop()
	}
}

// readReady reads a burst of frames on a connection the poller found
// readable (or that a closer claimed), then arms it again and exits: an
// idle connection holds no goroutine. The read deadline bounds the burst
// as in the parked mode: a frame must arrive whole within IdleTimeout.
func (c *wsConn) readReady() {
	if !c.armReadDeadline() || !c.burst() {
		c.end()
		return
	}
	switch c.arm() {
	case armClosing:
		c.end()
	case armParked:
		go c.readLoop() // on a fresh stack, as readLoop does
	}
}

type armResult int

const (
	armOK      armResult = iota // waiting in the poller
	armClosing                  // a close has begun: the caller ends the connection
	armParked                   // no reactor (any more): the caller starts a parked reader
)

// arm makes the connection wait for its next frame in the poller, giving
// up its read side: from here the poll loop, a closer or Close may claim
// it. The read deadline is cleared (no timer per idle connection); the
// sweeper closes it at idleUntil instead: IdleTimeout from now, or the
// deadline of a message in progress if that comes first.
func (c *wsConn) arm() armResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return armClosing
	}
	r := c.r
	if r == nil {
		return armParked
	}
	c.detachLocked(r)
	if c.nc != nil {
		_ = c.nc.SetReadDeadline(time.Time{})
	}
	c.deadline = 0
	now := r.now()
	until := now + int64(c.h.cfg.IdleTimeout)
	if c.msg != nil {
		until = min(until, now+c.msg.deadline-int64(time.Since(monoEpoch)))
	}
	c.idleUntil.Store(max(until, 1))
	c.armed = true // before the poller is told: it may report at once
	c.gen = r.nextGen()
	var err error
	if c.registered {
		err = r.rearm(c)
	} else {
		err = r.register(c)
	}
	if err != nil {
		c.armed = false
		c.idleUntil.Store(0)
		if !errors.Is(err, errReactorStopped) {
			c.h.log.Error("transport: poller refused a connection; it falls back to a parked reader", "err", err)
		}
		c.deregisterLocked()
		return armParked
	}
	return armOK
}

// claimLocked takes the read side of an armed connection. It reports
// whether it did, and so whether the caller must start a reader.
func (c *wsConn) claimLocked() bool {
	if !c.armed {
		return false
	}
	c.armed = false
	c.idleUntil.Store(0)
	return true
}

// deregisterLocked takes the connection out of the reactor: table entry,
// poller registration and reference. It must run before nc is closed (see
// reactor.go, "Reused fds"). The caller owns the read side or holds no
// claim on it; an armed registration must have been claimed first.
func (c *wsConn) deregisterLocked() {
	r := c.r
	if r == nil {
		return
	}
	if c.registered {
		r.forget(c)
		if err := r.p.del(c.fd); err != nil {
			c.h.log.Error("transport: removing a connection from the poller", "err", err)
		}
		c.registered = false
	}
	c.r = nil
	r.release()
}

// closeNC closes the connection after taking it out of the reactor. If it
// was waiting in the poller it gets a reader, which finds the connection
// closed and ends it: nothing else would.
func (c *wsConn) closeNC() {
	c.mu.Lock()
	wake := c.claimLocked()
	c.deregisterLocked()
	c.closeFDLocked()
	c.mu.Unlock()
	if wake {
		go c.readReady()
	}
}

// idleExpired closes a connection that the sweeper found waiting past
// its idleUntil, if it still is: for a message not whole by its deadline
// (the connection is armed, so the reader's msg is not changing), or else
// for idleness.
func (c *wsConn) idleExpired(r *reactor, now int64) {
	c.mu.Lock()
	if c.r != r || !c.armed || c.closing {
		c.mu.Unlock()
		return
	}
	if t := c.idleUntil.Load(); t == 0 || now < t {
		c.mu.Unlock()
		return
	}
	if c.msg != nil && c.msgLate() {
		flush, read := c.closeLocked(closeBody(channels.ClosePolicy, "message timeout"), false)
		c.mu.Unlock()
		c.h.stats.MessageTimeouts.Add(1)
		c.startClose(flush, read)
		return
	}
	flush, read := c.closeLocked(closeBody(channels.CloseGoingAway, "idle timeout"), false)
	c.mu.Unlock()
	c.h.stats.IdleTimeouts.Add(1)
	c.startClose(flush, read)
}
