package transport

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// Buffer sizes. They are taken from pools only while a connection reads or
// writes, so they cost per busy connection, not per open one.
const (
	readBufferSize  = 4 << 10
	writeBufferSize = 8 << 10
	// msgBufferSize is the first size of a buffer that reassembles a
	// message that did not fit the read buffer in one frame.
	msgBufferSize = 4 << 10
	// maxPooledMsgBuffer keeps rare big messages from pinning their
	// buffers in the pool.
	maxPooledMsgBuffer = 64 << 10
)

// readBuf is what a connection holds while it reads a burst of frames.
type readBuf struct {
	br  *bufio.Reader
	hdr [ws.MaxHeaderSize]byte // for ws.ReadHeaderBuffer, so it allocates nothing
}

// writeBuf is what a connection's flush holds while it writes.
type writeBuf struct {
	bw  *bufio.Writer
	hdr [ws.MaxHeaderSize]byte // for ws.WriteHeaderBuffer
}

var (
	readBufPool = sync.Pool{New: func() any {
		return &readBuf{br: bufio.NewReaderSize(nil, readBufferSize)}
	}}
	writeBufPool = sync.Pool{New: func() any {
		return &writeBuf{bw: bufio.NewWriterSize(nil, writeBufferSize)}
	}}
	msgBufPool = sync.Pool{New: func() any {
		b := make([]byte, 0, msgBufferSize)
		return &b
	}}
)

// outFrame is one frame waiting in a connection's outbound queue.
type outFrame struct {
	op   ws.OpCode
	data []byte // shared with other sockets: never modified
}

// wsConn is one upgraded WebSocket connection. It implements channels.Conn.
//
// While idle it holds no buffer and runs no writer. With event-driven
// reads (r != nil) it runs no reader either: its fd waits in the reactor's
// poller. Otherwise its reader goroutine is parked in a one-byte read into
// b1.
type wsConn struct {
	h    *WebSocketHandler
	nc   net.Conn
	sock Socket // set before the reader starts

	// Owned by the reader. The reader is a chain of goroutines (see
	// readLoop and readReady); each starts the next, directly or by
	// arming the connection in the poller, whose claim under mu orders
	// their accesses.
	//
	// Fields are ordered, and sized, so that the struct fits a smaller
	// size class: it is most of an idle connection's memory.
	pending *[]byte // bytes the client sent before our 101 answer; nil if none (most connections)
	msgBuf  *[]byte // reassembly buffer of the fragmented message in progress (pooled)

	mu    sync.Mutex
	queue []outFrame // nil while nothing is queued, so it pins nothing
	// nBytes counts the bytes of the frames queued or being written.
	nBytes int
	// closeDeadline bounds the close handshake, in nanoseconds on the
	// monotonic clock since monoEpoch (deadlineTime).
	closeDeadline int64

	// Event-driven reads (reactor.go), guarded by mu. r and fd are set
	// before the connection is shared; r becomes nil when the connection
	// leaves the reactor (it ends, or falls back to a parked reader).
	r *reactor
	// idleSince is r.now() when the connection was armed, 0 while a
	// goroutine owns its read side. The sweeper reads it without mu.
	idleSince atomic.Int64
	fd        int32
	gen       uint32 // generation of the last arming; guarded by mu
	nFrames   int32  // frames queued or being written; guarded by mu

	// Owned by the reader (see above).
	peeked bool      // b1 holds the first byte of the next frame
	b1     [1]byte   // target of the idle read
	msgOp  ws.OpCode // opcode of the fragmented message in progress, 0 if none
	dead   bool      // the connection failed: no close handshake possible

	// Guarded by mu.
	flushing   bool // the queue has a writer: in the writers' FIFO, in a writer's turn, or a flush goroutine
	closing    bool // Close began (or the connection failed): Send refuses
	ended      bool // the reader has finished
	registered bool // in r's table and poller
	armed      bool // registered and waiting: no goroutine reads; the first to claim it does
}

// monoEpoch anchors closeDeadline to the monotonic clock: a deadline kept
// as an int64 takes a third of a time.Time's room.
var monoEpoch = time.Now()

func deadlineTime(ns int64) time.Time { return monoEpoch.Add(time.Duration(ns)) }

func newWSConn(h *WebSocketHandler, nc net.Conn) *wsConn {
	return &wsConn{h: h, nc: nc}
}

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
		n, err := c.nc.Read(p[1:])
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
	return c.nc.Read(p)
}

// ---------------------------------------------------------------------
// Read path.

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
// sweeper measures idleness from idleSince instead.
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
	_ = c.nc.SetReadDeadline(time.Time{})
	c.idleSince.Store(r.now())
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
		c.idleSince.Store(0)
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
	c.idleSince.Store(0)
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
	c.mu.Unlock()
	_ = c.nc.Close()
	if wake {
		go c.readReady()
	}
}

// idleExpired closes a connection that the sweeper found waiting since
// before now-idle, if it still is.
func (c *wsConn) idleExpired(r *reactor, now, idle int64) {
	c.mu.Lock()
	if c.r != r || !c.armed || c.closing {
		c.mu.Unlock()
		return
	}
	if t := c.idleSince.Load(); t == 0 || now-t < idle {
		c.mu.Unlock()
		return
	}
	flush, read := c.closeLocked(closeBody(channels.CloseGoingAway, "idle timeout"), false)
	c.mu.Unlock()
	c.h.stats.IdleTimeouts.Add(1)
	c.startClose(flush, read)
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
	if c.pending == nil {
		for {
			if !c.armReadDeadline() {
				c.end()
				return
			}
			n, err := c.nc.Read(c.b1[:])
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

// armReadDeadline restarts the idle timer. Once a close has begun the
// close deadline stays in force and the reader stops (false).
func (c *wsConn) armReadDeadline() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(c.h.cfg.IdleTimeout))
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
	// reserved opcodes fail the connection; §5.1: a client frame must be
	// masked; §5.4: continuation frames only inside a fragmented message
	// and data frames only outside one; §5.5: control frames are final
	// and carry at most 125 bytes. §7.4.1: all of that is 1002.
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
	if c.msgBuf != nil {
		have = int64(len(*c.msgBuf))
	}
	// §10.4: an endpoint may limit message size; §7.4.1: 1009. Checked on
	// the declared length, before reading a byte of the payload.
	if h.Length > c.h.cfg.MaxFrameSize-have {
		c.h.stats.TooBig.Add(1)
		c.Close(channels.CloseTooBig, "message too big")
		return false
	}
	if c.msgOp == 0 {
		c.msgOp = h.OpCode
	}

	if h.Fin && c.msgBuf == nil && h.Length <= int64(br.Size()) {
		// The common case: a whole message in one frame that fits the
		// read buffer. Unmask it in place there (§5.3) and hand it over
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

	if c.msgBuf == nil {
		c.msgBuf = msgBufPool.Get().(*[]byte)
	}
	b := *c.msgBuf
	start := len(b)
	b, err := readPayload(br, b, h.Length)
	*c.msgBuf = b
	if err != nil {
		c.readError(err)
		return false
	}
	ws.Cipher(b[start:], h.Mask, 0)
	if !h.Fin {
		return true // §5.4: more fragments follow; control frames may come between
	}
	ok := c.deliver(c.msgOp, b)
	c.releaseMsg()
	return ok
}

// readPayload appends n bytes from r to b. It grows b as the bytes arrive,
// at most doubling what has arrived, never on the peer's declared length
// alone: a thousand peers that each declare a 1 MiB frame and send nothing
// must not cost a GiB.
func readPayload(r io.Reader, b []byte, n int64) ([]byte, error) {
	for n > 0 {
		if len(b) == cap(b) {
			b = slices.Grow(b, int(min(n, int64(max(cap(b), msgBufferSize)))))
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

func (c *wsConn) releaseMsg() {
	if c.msgBuf != nil {
		if cap(*c.msgBuf) <= maxPooledMsgBuffer {
			*c.msgBuf = (*c.msgBuf)[:0]
			msgBufPool.Put(c.msgBuf)
		}
		c.msgBuf = nil
	}
	c.msgOp = 0
}

// deliver hands a complete message to the socket. It reports whether to
// go on.
func (c *wsConn) deliver(op ws.OpCode, p []byte) (ok bool) {
	// §5.6 and §8.1: a text message must be UTF-8; §7.4.1: else 1007.
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
				"remote", c.nc.RemoteAddr().String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.Close(channels.CloseInternalError, "internal error")
			ok = false
		}
	}()
	c.sock.HandleFrame(p, op == ws.OpBinary)
	return true
}

// control handles a ping, pong or close frame (RFC 6455 §5.5). Control
// frames may arrive between the fragments of a message (§5.4).
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
		// §5.5.2: answer with a pong carrying the same application data.
		// It is queued behind frames already queued, "as soon as
		// practical" (§5.5.3). The payload is copied: p is the read
		// buffer's.
		var data []byte
		if len(p) > 0 {
			data = append([]byte(nil), p...)
		}
		return c.enqueue(ws.OpPong, data) == nil

	case ws.OpPong:
		// §5.5.3: an unsolicited pong is a unidirectional heartbeat; it
		// has already restarted the idle timer.
		return true

	case ws.OpClose:
		// §5.5.1: a close frame's body is empty or a 2-byte code plus a
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
			// §5.5.1: the answering close frame typically echoes the
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
	c.h.log.Debug("transport: websocket protocol error", "remote", c.nc.RemoteAddr().String(), "err", err)
	c.Close(channels.CloseProtocolError, "protocol error: "+err.Error())
	return false
}

// readError handles a failed read: the idle timeout starts a close
// (1001, PROTOCOL.md §5.3); anything else means the connection is gone.
func (c *wsConn) readError(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		if !closing {
			c.h.stats.IdleTimeouts.Add(1)
			c.Close(channels.CloseGoingAway, "idle timeout")
			return
		}
	}
	c.dead = true
}

// end runs when the reader stops: it completes the close handshake if the
// connection still works, closes it, and tells the socket, once.
func (c *wsConn) end() {
	c.releaseMsg()
	c.pending = nil
	if !c.dead {
		c.mu.Lock()
		if !c.closing {
			// Not reached today (every path that stops the reader without
			// a dead connection has begun a close); kept as a backstop.
			// The reader is this goroutine: the connection is not armed.
			flush, _ := c.closeLocked(closeBody(channels.CloseInternalError, ""), false)
			if flush {
				go c.flush()
			}
		}
		c.mu.Unlock()
		// RFC 6455 §7.1.1: after our close frame the server should close
		// the TCP connection first; the flush half-closes it (FIN) after
		// the close frame. Here we read, and discard, until the client
		// closes its side too, or until the close deadline (set by
		// closeLocked). Closing at once could reset the connection while
		// the client's unread bytes sit in our receive buffer, and a reset
		// may destroy the close frame before the client reads it.
		_, _ = io.Copy(io.Discard, c.nc)
	}
	c.mu.Lock()
	c.closing = true
	c.ended = true
	c.dropQueueLocked()
	c.mu.Unlock()
	c.closeNC()
	c.h.stats.Open.Add(-1)
	c.h.cfg.Sockets.release()
	defer func() {
		if r := recover(); r != nil {
			c.h.log.Error("transport: socket panicked in HandleClose", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	c.sock.HandleClose()
}

// ---------------------------------------------------------------------
// Write path.

// Send queues f (channels.Conn). It never blocks on the network: when the
// queue stops being empty the connection joins the writers' FIFO
// (writers.go), and a writer writes it.
func (c *wsConn) Send(f channels.Frame) error {
	op := ws.OpText
	if f.Binary {
		op = ws.OpBinary
	}
	return c.enqueue(op, f.Data)
}

func (c *wsConn) enqueue(op ws.OpCode, data []byte) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return channels.ErrConnClosed
	}
	cfg := &c.h.cfg
	if c.nFrames > 0 && (int(c.nFrames) >= cfg.MaxQueue || c.nBytes+len(data) > cfg.MaxQueueBytes) {
		// A client that does not read as fast as it is sent to must
		// neither grow our memory nor hold back the broadcaster
		// (DESIGN.md, "A broadcast's path" step 7): drop what is queued
		// and close with 1008 (PROTOCOL.md §5.3).
		flush, read := c.closeLocked(closeBody(channels.ClosePolicy, "slow consumer"), true)
		c.mu.Unlock()
		c.startClose(flush, read)
		c.h.stats.SlowConsumers.Add(1)
		c.h.log.Debug("transport: closing slow consumer", "remote", c.nc.RemoteAddr().String())
		return channels.ErrSlowConsumer
	}
	if c.queue == nil {
		c.queue = queueArrays.Get().(*queueArray)[:0]
	}
	c.queue = append(c.queue, outFrame{op: op, data: data})
	c.nFrames++
	c.nBytes += len(data)
	start := !c.flushing
	c.flushing = true
	c.mu.Unlock()
	if start {
		c.h.writers.push(c)
	}
	return nil
}

// Close starts the closing handshake (channels.Conn): a close frame with
// code and reason goes out after the frames already queued, then the
// connection closes; Close does not wait for it. Further calls do nothing.
// Codes that may not travel in a close frame become 1011.
func (c *wsConn) Close(code int, reason string) {
	body := closeBody(code, reason)
	c.mu.Lock()
	flush, read := c.closeLocked(body, false)
	c.mu.Unlock()
	c.startClose(flush, read)
}

// startClose starts what closeLocked asked for.
func (c *wsConn) startClose(flush, read bool) {
	if flush {
		go c.flush()
	}
	if read {
		go c.readReady()
	}
}

// closeLocked queues the close frame with body (empty for a close without
// a status code) and bounds the rest of the connection's life by the close
// deadline. It reports whether the caller must start a flush goroutine,
// and whether it must start a reader: a connection waiting in the poller
// has none, and the reader is what waits for the client's side of the
// close and ends the connection (startClose does both).
func (c *wsConn) closeLocked(body []byte, drop bool) (startFlush, startReader bool) {
	if c.closing {
		return false, false
	}
	startReader = c.claimLocked()
	c.closing = true
	if drop {
		c.dropQueueLocked()
	}
	c.queue = append(c.queue, outFrame{op: ws.OpClose, data: body})
	c.nFrames++
	c.nBytes += len(body)
	c.closeDeadline = int64(time.Since(monoEpoch) + c.h.cfg.CloseTimeout)
	// Applies to a write in progress too: a flush stuck on a client that
	// does not read gives up by the close deadline.
	_ = c.nc.SetWriteDeadline(deadlineTime(c.closeDeadline))
	_ = c.nc.SetReadDeadline(deadlineTime(c.closeDeadline))
	if c.flushing {
		return false, startReader
	}
	c.flushing = true
	return true, startReader
}

// dropQueueLocked forgets the frames not yet taken by a flush.
func (c *wsConn) dropQueueLocked() {
	for i := range c.queue {
		c.nBytes -= len(c.queue[i].data)
	}
	c.nFrames -= int32(len(c.queue))
	clear(c.queue)
	recycleQueue(c.queue)
	c.queue = nil
}

// queueArray is the array a queue starts in. A socket that gets a frame
// now and then would otherwise allocate a queue for every frame (it drops
// its queue whenever it empties, so that an idle socket pins nothing); a
// pool makes that steady path allocation-free. A queue that outgrows it
// moves to a bigger array that is not recycled.
type queueArray [4]outFrame

var queueArrays = sync.Pool{New: func() any { return new(queueArray) }}

// recycleQueue returns q's array to the pool if it has a queueArray's
// capacity. q must be cleared and no longer used. Such a q may also be
// the end of a larger array whose start is another batch's, in flight:
// the two never overlap (batches are capped at their length), so handing
// out the end is safe.
func recycleQueue(q []outFrame) {
	if cap(q) == len(queueArray{}) {
		queueArrays.Put((*queueArray)(q[:cap(q)]))
	}
}

// flush writes the queue with blocking writes until it is empty, then
// exits. It serves a connection that the writers cannot (a write the
// kernel did not take whole, which it waits for; a connection without a
// plain descriptor) and the close handshake. Frames queued meanwhile are
// coalesced into the same buffered writes.
func (c *wsConn) flush() {
	wb := writeBufPool.Get().(*writeBuf)
	wb.bw.Reset(c.nc)
	defer func() {
		wb.bw.Reset(nil)
		writeBufPool.Put(wb)
	}()
	for {
		c.mu.Lock()
		w, ok := c.takeLocked(0)
		if !ok {
			c.mu.Unlock()
			return
		}
		_ = c.nc.SetWriteDeadline(c.writeDeadlineLocked())
		c.mu.Unlock()
		err := w.encode(wb.bw, wb.hdr[:])
		if err == nil {
			err = wb.bw.Flush()
		}
		if err != nil {
			c.writeAbandoned(&w, err)
			return
		}
		c.wrote(&w, false)
	}
}

// writeDeadlineLocked is when a write starting now must give up:
// WriteTimeout from now, or the close deadline if that comes first.
func (c *wsConn) writeDeadlineLocked() time.Time {
	deadline := time.Now().Add(c.h.cfg.WriteTimeout)
	if c.closing {
		if cd := deadlineTime(c.closeDeadline); cd.Before(deadline) {
			deadline = cd
		}
	}
	return deadline
}

// halfClose follows the close frame, the last frame (Send refuses after
// it): the client sees EOF after it (RFC 6455 §7.1.1), and the reader
// waits for the client's side.
func (c *wsConn) halfClose() {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		c.closeNC()
	}
}

// writeFrame writes one whole message as one frame: FIN set, no
// fragmentation (RFC 6455 §5.4), and no mask, which a server must not use
// (§5.1). hdr is room for the header (ws.WriteHeaderBuffer).
func writeFrame(dst io.Writer, hdr []byte, f *outFrame) error {
	h := ws.Header{Fin: true, OpCode: f.op, Length: int64(len(f.data))}
	if err := ws.WriteHeaderBuffer(dst, h, hdr); err != nil {
		return err
	}
	_, err := dst.Write(f.data)
	return err
}

// writeFailed drops a connection whose write failed or timed out; closing
// it wakes the reader (or, for a connection waiting in the poller, starts
// one), which ends the socket.
func (c *wsConn) writeFailed(err error) {
	c.mu.Lock()
	ended := c.ended
	wasClosing := c.closing
	c.closing = true
	c.flushing = false
	c.dropQueueLocked()
	c.mu.Unlock()
	c.closeNC()
	if !ended && !wasClosing {
		c.h.stats.WriteErrors.Add(1)
		c.h.log.Debug("transport: websocket write failed", "remote", c.nc.RemoteAddr().String(), "err", err)
	}
}

// closeBody encodes a close frame body (RFC 6455 §5.5.1). The reason is cut
// to 123 bytes, on a rune boundary, so the body fits a control frame's 125
// (§5.5).
func closeBody(code int, reason string) []byte {
	if !validCloseCode(code) {
		code = channels.CloseInternalError
	}
	const maxReason = ws.MaxControlFramePayloadSize - 2
	if len(reason) > maxReason {
		cut := maxReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	return ws.NewCloseFrameBody(ws.StatusCode(code), reason)
}

// validCloseCode reports whether code may travel in a close frame: RFC 6455
// §7.4.1 and the IANA registry (1012-1014 were registered after the RFC),
// minus 1004 (reserved) and 1005, 1006, 1015 (never sent, §7.4.1), plus the
// application and private ranges of §7.4.2.
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
