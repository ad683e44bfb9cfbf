package transport

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"

	"github.com/gobwas/ws"
)

// Writers: see the package documentation, "Write path".
//
// A connection whose queue stops being empty is pushed on its handler's
// writerPool. At most GOMAXPROCS writer goroutines take connections from
// the pool in FIFO order; each encodes everything the connection has
// queued into its own buffer and hands it to the kernel in one
// non-blocking write. A connection that got more frames meanwhile goes to
// the back of the pool, so under a flood every busy connection gets one
// write per round and the frames of a round share it: the deeper the
// backlog, the fewer system calls per frame. Writers exit when the pool is
// empty, so an idle handler runs none.
//
// A write the kernel cannot take whole (the client's receive window is
// full) is not waited for by a writer, which would stall every other
// connection behind one slow client: the unwritten rest goes to a
// goroutine of that connection's own (wsConn.flush), which waits for it
// with WriteTimeout and then serves the connection until its queue is
// empty, as every connection did before writers existed. Connections
// without a plain descriptor (TLS served by this process) always take
// that path.

// maxKeptWriteBuffer bounds the buffer a writer keeps between
// connections: a connection with a deep backlog of large frames may grow
// it further, once.
const maxKeptWriteBuffer = 256 << 10

// maxWriteBatch bounds the payload bytes one writer's turn takes from a
// connection's queue.
const maxWriteBatch = 128 << 10

// writerPool is the FIFO of connections waiting for a writer.
type writerPool struct {
	mu      sync.Mutex
	ready   []*wsConn
	head    int // ready[:head] are taken
	running int // writer goroutines
	max     int
}

func newWriterPool() *writerPool {
	return &writerPool{max: runtime.GOMAXPROCS(0)}
}

// push queues c for a writer and starts one if fewer than max run. The
// caller set c.flushing: c is in the pool at most once.
func (p *writerPool) push(c *wsConn) {
	p.mu.Lock()
	p.ready = append(p.ready, c)
	start := p.running < p.max
	if start {
		p.running++
	}
	p.mu.Unlock()
	if start {
		go p.work()
	}
}

// next takes the oldest waiting connection, or reports that the pool is
// empty and the calling writer must exit.
func (p *writerPool) next() *wsConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.head == len(p.ready) {
		clear(p.ready[:p.head])
		p.ready, p.head = p.ready[:0], 0
		p.running--
		return nil
	}
	c := p.ready[p.head]
	p.ready[p.head] = nil
	p.head++
	if p.head >= 1024 && 2*p.head >= len(p.ready) {
		// Under constant load the pool never drains; slide the live
		// part down so the array does not grow without bound.
		n := copy(p.ready, p.ready[p.head:])
		clear(p.ready[n:])
		p.ready, p.head = p.ready[:n], 0
	}
	return c
}

func (p *writerPool) work() {
	wb := writerBufPool.Get().(*writerBuf)
	defer func() { writerBufPool.Put(wb) }()
	for c := p.next(); c != nil; c = p.next() {
		if !c.writeQueued(wb) {
			// The buffer went to c's own goroutine with the rest of
			// a write the kernel did not take whole.
			wb = writerBufPool.Get().(*writerBuf)
		} else if cap(wb.b) > maxKeptWriteBuffer {
			wb.b = make([]byte, 0, writeBufferSize)
		}
	}
}

// writerBuf is a writer's buffer: whole frames, header and payload, for
// one write.
type writerBuf struct {
	b   []byte
	hdr [ws.MaxHeaderSize]byte // for ws.WriteHeaderBuffer
	raw rawWrite               // the system call's arguments and results
}

// Write appends p (io.Writer, for ws.WriteHeaderBuffer).
func (wb *writerBuf) Write(p []byte) (int, error) {
	wb.b = append(wb.b, p...)
	return len(p), nil
}

var writerBufPool = sync.Pool{New: func() any {
	wb := &writerBuf{b: make([]byte, 0, writeBufferSize)}
	wb.raw.init()
	return wb
}}

// errWouldBlock: the kernel took none of the write now.
var errWouldBlock = errors.New("transport: write would block")

// leaveWriteLocked takes c off the write path, and lets its file go if it
// waits in the poller meanwhile: its reader could not as it armed, a
// writer being on the connection (wsconn_fd.go). Called with c.mu held.
func (c *wsConn) leaveWriteLocked() {
	c.flushing = false
	c.dropQueueLocked()
	if c.armed && c.nc != nil && c.r != nil {
		c.detachArmedLocked()
	}
}

// written is what one write took from a connection's queue.
type written struct {
	batch                   []outFrame // the frames, cleared
	frames, bytes, messages int
	closeSent               bool
}

// takeLocked begins a write: it takes queued frames, up to limit payload
// bytes (and at least one frame; limit 0: all of them). With nothing to
// write (or a connection whose reader ended) c leaves the write path,
// and takeLocked reports false.
func (c *wsConn) takeLocked(limit int) (written, bool) {
	if len(c.queue) == 0 || c.ended {
		c.leaveWriteLocked()
		return written{}, false
	}
	k := len(c.queue)
	if limit > 0 {
		size := len(c.queue[0].data)
		k = 1
		for k < len(c.queue) && size+len(c.queue[k].data) <= limit {
			size += len(c.queue[k].data)
			k++
		}
	}
	w := written{batch: c.queue, frames: k}
	if k == len(c.queue) {
		c.queue = nil
	} else {
		// The rest stays queued in the same array, after the batch:
		// the batch is capped at its length so that nothing appended
		// to it later can reach the rest.
		w.batch, c.queue = c.queue[:k:k], c.queue[k:]
	}
	return w, true
}

// encode writes the batch's frames to dst and clears them, counting what
// it carried. After a failed frame it only counts the rest: the
// accounting of queued bytes covers the whole batch.
func (w *written) encode(dst io.Writer, hdr []byte) error {
	var err error
	for i := range w.batch {
		f := &w.batch[i]
		w.bytes += len(f.data)
		if err == nil {
			err = writeFrame(dst, hdr, f)
			w.closeSent = f.op == ws.OpClose
			if f.op == ws.OpText || f.op == ws.OpBinary {
				w.messages++
			}
		}
		*f = outFrame{}
	}
	return err
}

// writeQueued is a writer's turn on c: it writes what it takes from the
// queue, at most maxWriteBatch bytes (a deep backlog is encoded only as
// far as a socket is likely to take, and the connection queues again
// behind the others for the rest), in one non-blocking write. It reports
// false when it gave wb away to the goroutine it started to finish the
// write.
func (c *wsConn) writeQueued(wb *writerBuf) bool {
	c.mu.Lock()
	w, ok := c.takeLocked(maxWriteBatch)
	// nc, or the bare descriptor, held open for the write (wsconn_fd.go).
	nc := c.nc
	held := ok && c.holdFDLocked()
	fd := c.fd
	c.mu.Unlock()
	if !ok {
		return true
	}
	wb.b = wb.b[:0]
	_ = w.encode(wb, wb.hdr[:]) // appending to wb.b cannot fail

	var n int
	var err error
	switch {
	case held:
		n, err = wb.raw.writeFD(fd, wb.b)
	case nc != nil:
		n, err = wb.raw.write(nc, wb.b)
	default:
		err = net.ErrClosed
	}
	switch {
	case err == nil && n == len(wb.b):
		c.wrote(&w, true, held)
		return true
	case err == nil || errors.Is(err, errWouldBlock):
		go c.finishWrite(wb, n, w, held)
		return false
	default:
		c.writeAbandoned(&w, err, held)
		return true
	}
}

// writeAbandoned settles the accounting of a write that failed, which
// delivered nothing, and drops the connection (writeFailed). held: the
// write was made on the bare descriptor, held for it.
func (c *wsConn) writeAbandoned(w *written, err error, held bool) {
	w.messages, w.closeSent = 0, false
	c.wrote(w, false, held)
	c.writeFailed(err)
}

// wrote settles the accounting of a write that is over, and gives the
// batch's array back to the queue when nothing was queued meanwhile, so
// that a busy connection reuses one array. A pooled connection with
// frames queued meanwhile goes back to the pool; otherwise it leaves the
// write path, dropping its queue's array. held: the write was made on
// the bare descriptor, which is released here.
func (c *wsConn) wrote(w *written, pooled, held bool) {
	if w.messages > 0 {
		// One atomic add per write, not per frame.
		c.h.stats.MessagesOut.Add(uint64(w.messages))
	}
	if w.closeSent {
		c.halfClose()
	}
	c.mu.Lock()
	if held {
		c.releaseFDLocked()
	}
	c.nFrames -= int32(w.frames)
	c.nBytes -= w.bytes
	if c.backlogWatched {
		c.wakeBacklogLocked()
	}
	if c.queue == nil {
		// The batch's capacity ends where it did: a batch that was
		// the head of a longer queue shares no element with its rest.
		c.queue = w.batch[:0]
	} else {
		recycleQueue(w.batch)
	}
	if !pooled {
		c.mu.Unlock()
		return
	}
	if len(c.queue) == 0 || c.ended {
		c.leaveWriteLocked()
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.h.writers.push(c)
}

// finishWrite waits for the kernel to take the unwritten end of a
// writer's write, from wb.b[n:], then serves c from its own goroutine
// (flush) until its queue is empty. A bare connection attaches to wait;
// held: the write was made on its descriptor, which is released first.
func (c *wsConn) finishWrite(wb *writerBuf, n int, w written, held bool) {
	c.mu.Lock()
	if held {
		c.releaseFDLocked()
	}
	nc, err := c.attachLocked()
	if err == nil {
		_ = nc.SetWriteDeadline(c.writeDeadlineLocked())
	}
	c.mu.Unlock()
	if err == nil {
		_, err = nc.Write(wb.b[n:])
	}
	if cap(wb.b) <= maxKeptWriteBuffer {
		writerBufPool.Put(wb)
	}
	if err != nil {
		c.writeAbandoned(&w, err, false)
		return
	}
	c.wrote(&w, false, false)
	c.flush()
}
