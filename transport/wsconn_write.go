package transport

import (
	"io"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// The write path of a wsConn: the outbound queue, the close handshake's
// frame, and the blocking flush that the writers (writers.go) fall back to.

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
		// neither grow our memory nor hold back the broadcaster: drop
		// what is queued and close with 1008 (PROTOCOL.md §5.3).
		flush, read := c.closeLocked(closeBody(channels.ClosePolicy, "slow consumer"), true)
		c.mu.Unlock()
		c.startClose(flush, read)
		c.h.stats.SlowConsumers.Add(1)
		c.h.log.Debug("transport: closing slow consumer", "remote", remote{c})
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
	c.deadline = int64(time.Since(monoEpoch) + c.h.cfg.CloseTimeout)
	if c.backlogWatched {
		c.wakeBacklogLocked()
	}
	// Applies to a write in progress too: a flush stuck on a client that
	// does not read gives up by the close deadline. (A bare connection
	// has none waiting; an attach sets them.)
	if c.nc != nil {
		_ = c.nc.SetWriteDeadline(deadlineTime(c.deadline))
		_ = c.nc.SetReadDeadline(deadlineTime(c.deadline))
	}
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
	defer func() {
		wb.bw.Reset(nil)
		writeBufPool.Put(wb)
	}()
	// The writes wait: a bare connection attaches. nc then stays set
	// (flushing keeps the reader from detaching it).
	var nc connIO
	for {
		c.mu.Lock()
		w, ok := c.takeLocked(0)
		if !ok {
			c.mu.Unlock()
			return
		}
		if nc == nil {
			var err error
			if nc, err = c.attachLocked(); err != nil {
				c.mu.Unlock()
				c.writeAbandoned(&w, err, false)
				return
			}
			wb.bw.Reset(nc)
		}
		_ = nc.SetWriteDeadline(c.writeDeadlineLocked())
		c.mu.Unlock()
		err := w.encode(wb.bw, wb.hdr[:])
		if err == nil {
			err = wb.bw.Flush()
		}
		if err != nil {
			c.writeAbandoned(&w, err, false)
			return
		}
		c.wrote(&w, false, false)
	}
}

// writeDeadlineLocked is when a write starting now must give up:
// WriteTimeout from now, or the close deadline if that comes first.
func (c *wsConn) writeDeadlineLocked() time.Time {
	deadline := time.Now().Add(c.h.cfg.WriteTimeout)
	if c.closing {
		if cd := deadlineTime(c.deadline); cd.Before(deadline) {
			deadline = cd
		}
	}
	return deadline
}

// halfClose follows the close frame, the last frame (Send refuses after
// it): the client sees EOF after it (RFC 6455 §7.1.1), and the reader
// waits for the client's side.
func (c *wsConn) halfClose() {
	c.mu.Lock()
	nc := c.nc
	held := c.holdFDLocked()
	fd := c.fd
	c.mu.Unlock()
	switch cw := nc.(type) {
	case nil:
		if held {
			shutdownWriteFD(fd)
			c.mu.Lock()
			c.releaseFDLocked()
			c.mu.Unlock()
		}
	case interface{ CloseWrite() error }:
		_ = cw.CloseWrite()
	case *os.File:
		if raw, err := cw.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) { shutdownWriteFD(int32(fd)) })
		}
	default:
		c.closeNC()
	}
}

// writeFrame writes one whole message as one frame: FIN set, no
// fragmentation (RFC 6455 §5.4), and no mask, which a server must not use
// (RFC 6455 §5.1). hdr is room for the header (ws.WriteHeaderBuffer).
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
	if c.backlogWatched {
		c.wakeBacklogLocked()
	}
	c.mu.Unlock()
	c.closeNC()
	if !ended && !wasClosing {
		c.h.stats.WriteErrors.Add(1)
		c.h.log.Debug("transport: websocket write failed", "remote", remote{c}, "err", err)
	}
}

// closeBody encodes a close frame body (RFC 6455 §5.5.1). The reason is cut
// to 123 bytes, on a rune boundary, so the body fits a control frame's 125
// (RFC 6455 §5.5).
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
// minus 1004 (reserved) and 1005, 1006, 1015 (never sent, RFC 6455 §7.4.1), plus
// the application and private ranges of RFC 6455 §7.4.2.
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
