package transport

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// The read path of a wsConn: waiting for a frame in a parked read, reading
// a burst of frames, and handling data and control frames (RFC 6455 §5).

// sockReader is the io.Reader under the pooled bufio.Reader: it hands out
// the byte of the idle read and the pre-upgrade bytes before reading nc.
type sockReader struct{ c *wsConn }

func (r sockReader) Read(p []byte) (int, error) {
	c := r.c
	if c.peeked {
		c.peeked = false
		p[0] = c.b1[0]
		if len(p) == 1 {
			return 1, nil
		}
		// Every frame header has at least two bytes (RFC 6455 §5.2), so
		// more is on its way: one read syscall instead of two.
		n, err := c.read(p[1:])
		return n + 1, err
	}
	if c.pending != nil {
		n := copy(p, *c.pending)
		*c.pending = (*c.pending)[n:]
		if len(*c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	return c.read(p)
}

// readLoop waits for the next frame and handles every frame that is then
// available. It parks in a one-byte read into c.b1, so an idle connection
// holds no read buffer; only when a byte arrives does it take a pooled
// bufio.Reader, which it returns as soon as nothing more is buffered.
//
// After a burst it starts a fresh goroutine to wait for the next one and
// exits. Handling a frame (decoding, channel callbacks, encoding replies)
// grows a goroutine's stack to several KiB, and the runtime shrinks a
// stack only by half per garbage collection; with a heartbeat every 30 s
// a long-lived reader would keep its grown stack for good. A goroutine
// that exits frees a grown stack at once, and its successor starts with
// the runtime's starting size (2 KiB when most goroutines are idle readers),
// which is all that a parked read needs. The price is one goroutine start
// per burst.
//
// This is the read path with ParkedReads, off Linux, over TLS, and of a
// connection whose reactor stopped under it (WebSocketHandler.Close).
func (c *wsConn) readLoop() {
	// Without a reactor the connection stays attached (nothing detaches
	// it): nc, taken once, stays the connection's.
	c.mu.Lock()
	nc, err := c.attachLocked()
	c.mu.Unlock()
	if err != nil {
		c.dead = true
		c.end()
		return
	}
	if c.pending == nil {
		for {
			if !c.armReadDeadline() {
				c.end()
				return
			}
			n, err := nc.Read(c.b1[:])
			if n == 1 {
				c.peeked = true
				break
			}
			if err != nil {
				c.readError(err)
				c.end()
				return
			}
		}
	} else if !c.armReadDeadline() {
		c.end()
		return
	}
	if !c.burst() {
		c.end()
		return
	}
	go c.readLoop()
}

// burst reads frames until nothing is buffered. It reports whether the
// connection stays open.
func (c *wsConn) burst() bool {
	rb := readBufPool.Get().(*readBuf)
	rb.br.Reset(sockReader{c}) // pointer-shaped: no allocation
	defer func() {
		// Only called with nothing buffered, or when the connection
		// ends and what is buffered does not matter.
		rb.br.Reset(nil)
		readBufPool.Put(rb)
	}()
	for {
		if !c.readFrame(rb) {
			return false
		}
		if rb.br.Buffered() == 0 && c.pending == nil {
			return true
		}
		// The idle timer restarts with every frame (any opcode).
		if !c.armReadDeadline() {
			return false
		}
	}
}

// armReadDeadline restarts the idle timer, which a message in progress
// cuts short to its own deadline. Once a close has begun the close
// deadline stays in force and the reader stops (false).
func (c *wsConn) armReadDeadline() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	d := time.Now().Add(c.h.cfg.IdleTimeout)
	if c.msg != nil {
		if md := deadlineTime(c.msg.deadline); md.Before(d) {
			d = md
		}
	}
	if c.nc != nil {
		_ = c.nc.SetReadDeadline(d)
	}
	// A bare connection's reads do not wait; an attach applies it.
	c.deadline = int64(d.Sub(monoEpoch))
	return true
}

// readFrame reads and handles one frame. It reports whether to go on.
func (c *wsConn) readFrame(rb *readBuf) bool {
	br := rb.br
	h, err := ws.ReadHeaderBuffer(br, rb.hdr[:])
	if err != nil {
		if errors.Is(err, ws.ErrHeaderLengthMSB) || errors.Is(err, ws.ErrHeaderLengthUnexpected) {
			return c.protocolError(err)
		}
		c.readError(err)
		return false
	}
	state := ws.StateServerSide
	if c.msgOp != 0 {
		state = state.Set(ws.StateFragmented)
	}
	// RFC 6455 §5.2: reserved bits without a negotiated extension and
	// reserved opcodes fail the connection; RFC 6455 §5.1: a client frame
	// must be masked; RFC 6455 §5.4: continuation frames only inside a
	// fragmented message and data frames only outside one; RFC 6455 §5.5:
	// control frames are final and carry at most 125 bytes. RFC 6455
	// §7.4.1: all of that is 1002.
	if err := ws.CheckHeader(h, state); err != nil {
		return c.protocolError(err)
	}
	if h.OpCode.IsControl() {
		return c.control(br, h)
	}
	return c.data(br, h)
}

// data handles a text, binary or continuation frame (RFC 6455 §5.6, §5.4).
func (c *wsConn) data(br *bufio.Reader, h ws.Header) bool {
	var have int64
	if c.msg != nil {
		have = int64(len(c.msg.b))
	}
	// RFC 6455 §10.4: an endpoint may limit message size; RFC 6455
	// §7.4.1: 1009. Checked on
	// the declared length, before reading a byte of the payload.
	if h.Length > c.h.cfg.MaxFrameSize-have {
		c.h.stats.TooBig.Add(1)
		c.Close(channels.CloseTooBig, "message too big")
		return false
	}
	if c.msgOp == 0 {
		c.msgOp = h.OpCode
	}

	if h.Fin && c.msg == nil && h.Length <= int64(br.Size()) {
		// The common case: a whole message in one frame that fits the
		// read buffer. Unmask it in place there (RFC 6455 §5.3) and hand it over
		// without copying.
		p, err := br.Peek(int(h.Length))
		if err != nil {
			c.readError(err)
			return false
		}
		ws.Cipher(p, h.Mask, 0)
		ok := c.deliver(c.msgOp, p)
		_, _ = br.Discard(len(p))
		c.msgOp = 0
		return ok
	}

	if c.msg == nil && !c.beginMsg() {
		return false
	}
	m := c.msg
	start := len(m.b)
	b, err := readPayload(br, m.b, h.Length, c.chargeMsg)
	m.b = b
	if err != nil {
		if errors.Is(err, errMessageBuffersFull) {
			c.budgetRefused()
			return false
		}
		c.readError(err)
		return false
	}
	ws.Cipher(b[start:], h.Mask, 0)
	if !h.Fin {
		return true // RFC 6455 §5.4: more fragments follow; control frames may come between
	}
	ok := c.deliver(c.msgOp, b)
	c.releaseMsg()
	return ok
}

// beginMsg starts the reassembly of a message: a buffer (counted against
// MaxMessageBuffers, see wsconn_budget.go), and the deadline by which the
// message must be whole, which from here bounds every read until it is.
// It reports whether to go on.
func (c *wsConn) beginMsg() bool {
	m := msgPool.Get().(*msgState)
	c.h.budget.begin(c, m, c.h.cfg.MessageTimeout)
	c.msg = m
	if !c.chargeMsg(cap(m.b)) {
		c.budgetRefused()
		return false
	}
	return c.armReadDeadline()
}

// budgetRefused closes the socket whose message did not fit the budget,
// or was evicted from it.
func (c *wsConn) budgetRefused() {
	c.h.log.Debug("transport: message buffers full", "remote", remote{c}, "held", c.h.stats.MessageBuffers.Load())
	c.Close(channels.CloseTryAgainLater, "message buffers full")
}

// errMessageBuffersFull stops a read whose buffer would take the handler
// past MaxMessageBuffers.
var errMessageBuffersFull = errors.New("transport: message buffers full")

// chargeMsg counts n more bytes of c.msg's buffer against the handler's
// budget, and reports whether they fit it (WebSocketHandler.charge). Bytes
// that do not fit are not counted (nor kept: the connection closes).
func (c *wsConn) chargeMsg(n int) bool { return c.h.charge(c.msg, n) }

// readPayload appends n bytes from r to b. It grows b as the bytes arrive,
// at most doubling what has arrived, never on the peer's declared length
// alone: a thousand peers that each declare a 1 MiB frame and send nothing
// must not cost a GiB. Each growth is first offered to charge (if not
// nil), with the bytes it adds; a refusal ends the read with
// errMessageBuffersFull, b not grown.
func readPayload(r io.Reader, b []byte, n int64, charge func(int) bool) ([]byte, error) {
	for n > 0 {
		if len(b) == cap(b) {
			grown := slices.Grow(b, int(min(n, int64(max(cap(b), msgBufferSize)))))
			if charge != nil && !charge(cap(grown)-cap(b)) {
				return b, errMessageBuffersFull
			}
			b = grown
		}
		chunk := int(min(int64(cap(b)-len(b)), n))
		k, err := io.ReadFull(r, b[len(b):len(b)+chunk])
		b = b[:len(b)+k]
		n -= int64(k)
		if err != nil {
			return b, err
		}
	}
	return b, nil
}

// releaseMsg ends the message in progress, if any: its bytes leave
// MessageBuffers, and its buffer goes back to the pool unless it grew too
// big to keep there, so that a socket that once sent a big message does
// not keep its buffer.
func (c *wsConn) releaseMsg() {
	if m := c.msg; m != nil {
		c.h.uncharge(m)
		c.msg = nil
		if cap(m.b) <= maxPooledMsgBuffer {
			*m = msgState{b: m.b[:0]}
			msgPool.Put(m)
		}
	}
	c.msgOp = 0
}

// msgLate reports whether the message in progress is past its deadline.
func (c *wsConn) msgLate() bool {
	return int64(time.Since(monoEpoch)) >= c.msg.deadline
}

// deliver hands a complete message to the socket. It reports whether to
// go on.
func (c *wsConn) deliver(op ws.OpCode, p []byte) (ok bool) {
	// RFC 6455 §5.6 and §8.1: a text message must be UTF-8; RFC 6455
	// §7.4.1: else 1007.
	if op == ws.OpText && !utf8.Valid(p) {
		c.h.stats.InvalidUTF8.Add(1)
		c.Close(channels.CloseInvalidData, "invalid UTF-8")
		return false
	}
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		return false // closing: nothing more reaches the socket
	}
	defer func() {
		if r := recover(); r != nil {
			c.h.log.Error("transport: socket panicked handling a frame",
				"remote", remote{c}, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.Close(channels.CloseInternalError, "internal error")
			ok = false
		}
	}()
	c.sock.HandleFrame(p, op == ws.OpBinary)
	return true
}

// control handles a ping, pong or close frame (RFC 6455 §5.5). Control
// frames may arrive between the fragments of a message (RFC 6455 §5.4).
func (c *wsConn) control(br *bufio.Reader, h ws.Header) bool {
	// At most 125 bytes (checked by ws.CheckHeader): within the buffer.
	p, err := br.Peek(int(h.Length))
	if err != nil {
		c.readError(err)
		return false
	}
	ws.Cipher(p, h.Mask, 0)
	defer func() { _, _ = br.Discard(len(p)) }()

	switch h.OpCode {
	case ws.OpPing:
		// RFC 6455 §5.5.2: answer with a pong carrying the same application data.
		// It is queued behind frames already queued, "as soon as
		// practical" (RFC 6455 §5.5.3). The payload is copied: p is the read
		// buffer's.
		var data []byte
		if len(p) > 0 {
			data = append([]byte(nil), p...)
		}
		return c.enqueue(ws.OpPong, data) == nil

	case ws.OpPong:
		// RFC 6455 §5.5.3: an unsolicited pong is a unidirectional heartbeat; it
		// has already restarted the idle timer.
		return true

	case ws.OpClose:
		// RFC 6455 §5.5.1: a close frame's body is empty or a 2-byte code plus a
		// UTF-8 reason.
		var body []byte
		switch {
		case len(p) == 1:
			return c.protocolError(errors.New("close frame with a 1-byte body"))
		case len(p) >= 2:
			code := int(p[0])<<8 | int(p[1])
			if !validCloseCode(code) {
				return c.protocolError(fmt.Errorf("close code %d", code))
			}
			if !utf8.Valid(p[2:]) {
				c.h.stats.InvalidUTF8.Add(1)
				c.Close(channels.CloseInvalidData, "invalid UTF-8 in close reason")
				return false
			}
			// RFC 6455 §5.5.1: the answering close frame typically echoes the
			// status code it received.
			body = ws.NewCloseFrameBody(ws.StatusCode(code), "")
		}
		c.mu.Lock()
		flush, read := c.closeLocked(body, false)
		c.mu.Unlock()
		c.startClose(flush, read)
		return false
	}
	return true // not reached: CheckHeader refuses other control opcodes
}

// protocolError fails the connection with 1002 (RFC 6455 §7.4.1).
func (c *wsConn) protocolError(err error) bool {
	c.h.stats.ProtocolError.Add(1)
	c.h.log.Debug("transport: websocket protocol error", "remote", remote{c}, "err", err)
	c.Close(channels.CloseProtocolError, "protocol error: "+err.Error())
	return false
}

// readError handles a failed read: a deadline starts a close, 1008 if the
// message in progress is past its own, else 1001 for the idle timeout
// (PROTOCOL.md §5.3); anything else means the connection is gone. A
// deadline before the close deadline on a closing connection is an
// eviction's wake-up: the connection still works.
func (c *wsConn) readError(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.mu.Lock()
		closing := c.closing
		woken := closing && int64(time.Since(monoEpoch)) < c.deadline
		c.mu.Unlock()
		if woken {
			return
		}
		if !closing && c.msg != nil && c.msgLate() {
			c.h.stats.MessageTimeouts.Add(1)
			c.Close(channels.ClosePolicy, "message timeout")
			return
		}
		if !closing {
			c.h.stats.IdleTimeouts.Add(1)
			c.Close(channels.CloseGoingAway, "idle timeout")
			return
		}
	}
	c.dead = true
}
