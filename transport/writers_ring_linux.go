//go:build linux

package transport

import (
	"sync"
	"syscall"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// Batched sends: where io_uring is to be had, a writer takes up to
// sendRingEntries connections from the pool at a time, encodes what each
// has queued into one buffer, and hands the kernel all their sends in
// one io_uring_enter(2) (sendRing) instead of a write(2) each. The
// kernel does the same work per send, but a system call's own cost is
// paid once per batch: on the 2-vCPU hosts of BENCHMARKS.md a send to one
// of 5,000 sleeping readers cost about 40 % less CPU this way than a
// write(2) (BenchmarkKernelFloor/fanout-N-uring against fanout-N). What
// a socket does not take whole goes on as from a write(2): the rest to
// the connection's own goroutine (finishWrite).
//
// A send names its connection's descriptor by number, so the number must
// not be closed and handed to another connection before the send is
// over: each descriptor of a batch is held through its RawConn.Control
// (as a single write is, rawWrite) for the whole submission, the
// Controls nested one in the other.

// ringSet is a writerPool's rings; guarded by writerPool.mu.
type ringSet struct {
	free []*sendRing
	// off: no more rings (the config said so, a ring could not be set
	// up or broke, or the pool closed); writers use write(2).
	off bool
}

func (s *ringSet) disable() { s.off = true }

// takeRing gives a writer a ring, or nil when it must use write(2).
func (p *writerPool) takeRing() *sendRing {
	p.mu.Lock()
	if n := len(p.rings.free); n > 0 {
		r := p.rings.free[n-1]
		p.rings.free = p.rings.free[:n-1]
		p.mu.Unlock()
		return r
	}
	off := p.rings.off
	p.mu.Unlock()
	if off {
		return nil
	}
	// At most one ring per writer running at once (GOMAXPROCS) is ever
	// made: a writer gives its ring back before it exits.
	r, err := newSendRing()
	if err != nil {
		p.mu.Lock()
		logged := p.rings.off
		p.rings.off = true
		p.mu.Unlock()
		if !logged {
			p.log.Info("transport: no io_uring, every write is a system call of its own", "err", err)
		}
		return nil
	}
	return r
}

// putRing takes a writer's ring back, or closes it if it broke or the
// pool no longer keeps rings.
func (p *writerPool) putRing(r *sendRing, broken bool) {
	p.mu.Lock()
	if broken && !p.rings.off {
		p.log.Warn("transport: an io_uring send batch failed; every write is a system call of its own from now on")
	}
	if broken {
		p.rings.off = true
	}
	keep := !p.rings.off
	if keep {
		p.rings.free = append(p.rings.free, r)
	}
	p.mu.Unlock()
	if !keep {
		r.close()
	}
}

// closeRings closes the rings no writer holds; a writer closes its own
// when it gives it back.
func (p *writerPool) closeRings() {
	p.mu.Lock()
	p.rings.off = true
	free := p.rings.free
	p.rings.free = nil
	p.mu.Unlock()
	for _, r := range free {
		r.close()
	}
}

// sendBatches is a writer's work in batches. It reports false, having
// written nothing or settled all it took, when the writer must go on with
// write(2): there is no ring, or its ring broke.
func (p *writerPool) sendBatches() bool {
	r := p.takeRing()
	if r == nil {
		return false
	}
	b := sendBatchPool.Get().(*sendBatch)
	defer sendBatchPool.Put(b)
	for {
		if !b.fill(p) {
			p.putRing(r, false)
			return true
		}
		err := b.send(r, p.stats)
		b.settle(p.stats)
		if err != nil {
			p.putRing(r, true)
			return false
		}
	}
}

// sendBatch is one writer's batch: the connections whose queues it
// took, their frames in one buffer, and what became of each send.
type sendBatch struct {
	buf   []byte
	hdr   [ws.MaxHeaderSize]byte
	n     int
	items [sendRingEntries]batchItem
	// Arguments of sendRing.sendAll, for the items that hold a
	// descriptor (at[j] is such an item's index).
	fds  [sendRingEntries]int32
	bufs [sendRingEntries][]byte
	res  [sendRingEntries]int32
	at   [sendRingEntries]int
	// ring, stats and err: the submission under way, for the innermost
	// hold.
	ring  *sendRing
	stats *Stats
	err   error
}

// batchItem is one connection's part of a batch.
type batchItem struct {
	c          *wsConn
	w          written
	raw        syscall.RawConn
	start, end int   // its bytes in the batch's buf
	fd         int32 // held while the batch is submitted
	res        int   // what the send returned: bytes taken, or -errno
	err        error // no send: the descriptor was closed, or the ring broke
	// held is this item's Control callback, made once per sendBatch.
	held func(fd uintptr)
}

var sendBatchPool = sync.Pool{New: func() any {
	b := &sendBatch{buf: make([]byte, 0, writeBufferSize)}
	for i := range b.items {
		it := &b.items[i]
		it.held = func(fd uintptr) {
			it.fd = int32(fd)
			b.hold(i + 1)
		}
	}
	return b
}}

// Write appends p (io.Writer, for encoding frames).
func (b *sendBatch) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// fill takes connections from the pool, up to sendRingEntries and
// about maxWriteBatch bytes of frames, and encodes their queues. It
// reports false, the writer done, when the pool was empty at the start.
func (b *sendBatch) fill(p *writerPool) bool {
	if cap(b.buf) > 2*maxKeptWriteBuffer {
		b.buf = make([]byte, 0, writeBufferSize)
	}
	b.buf = b.buf[:0]
	b.n = 0
	for first := true; b.n < len(b.items) && len(b.buf) < maxWriteBatch; first = false {
		var c *wsConn
		if first {
			if c = p.next(); c == nil {
				return false
			}
		} else if c = p.tryNext(); c == nil {
			break
		}
		c.mu.Lock()
		if c.heldLocked() {
			c.mu.Unlock()
			continue // Release brings it back
		}
		w, ok := c.takeLocked(maxWriteBatch)
		c.mu.Unlock()
		if !ok {
			continue
		}
		start := len(b.buf)
		_ = w.encode(b, b.hdr[:]) // appending to buf cannot fail
		raw, err := plainRawConn(c.nc)
		if err != nil {
			// No plain descriptor: the connection's own goroutine
			// writes it.
			wb := writerBufPool.Get().(*writerBuf)
			wb.b = append(wb.b[:0], b.buf[start:]...)
			b.buf = b.buf[:start]
			go c.finishWrite(wb, 0, w)
			continue
		}
		b.items[b.n] = batchItem{c: c, w: w, raw: raw, start: start, end: len(b.buf), held: b.items[b.n].held}
		b.n++
	}
	return true
}

// send makes the batch's sends, each descriptor held throughout. It
// returns the ring's failure, if any: the ring must not be used again.
func (b *sendBatch) send(r *sendRing, stats *Stats) error {
	b.ring, b.stats, b.err = r, stats, nil
	b.hold(0)
	b.ring, b.stats = nil, nil
	return b.err
}

// hold holds the descriptors of items i and on, each inside the last's
// Control, and submits from the innermost. An item whose descriptor is
// closed already gets no send.
func (b *sendBatch) hold(i int) {
	for ; i < b.n; i++ {
		it := &b.items[i]
		err := it.raw.Control(it.held)
		if err == nil {
			return // it.held went on from i+1
		}
		it.err = err
	}
	b.submit()
}

// submit runs innermost, every descriptor held.
func (b *sendBatch) submit() {
	k := 0
	for i := range b.n {
		it := &b.items[i]
		if it.err != nil {
			continue
		}
		b.fds[k], b.bufs[k], b.at[k] = it.fd, b.buf[it.start:it.end], i
		k++
	}
	if k > 0 {
		// Counted before the sends, so that a client that got one
		// finds its batch counted.
		b.stats.SendBatches.Add(1)
	}
	err := b.ring.sendAll(b.fds[:k], b.bufs[:k], b.res[:k])
	for j := range k {
		it := &b.items[b.at[j]]
		switch err {
		case nil:
			it.res = int(b.res[j])
		case errSendRingUnsent:
			it.res = rawSend(it.fd, b.bufs[j])
		default:
			it.err = err
		}
		b.bufs[j] = nil
	}
	b.err = err
}

// rawSend is one non-blocking write(2), as rawWrite makes it, with its
// result as a send's: bytes taken or -errno.
func rawSend(fd int32, p []byte) int {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if errno != 0 {
		return -int(errno)
	}
	return int(n)
}

// settle settles each item as writeQueued settles a write(2), and counts
// the batch's messages in one add: the writers share the counter.
func (b *sendBatch) settle(stats *Stats) {
	messages := 0
	for i := range b.n {
		it := &b.items[i]
		c, seg := it.c, b.buf[it.start:it.end]
		if it.err == nil && it.res == len(seg) {
			messages += it.w.messages
			it.w.messages = 0
		}
		switch {
		case it.err != nil:
			c.writeAbandoned(&it.w, it.err)
		case it.res == len(seg):
			c.wrote(&it.w, true)
		case it.res >= 0 || it.res == -int(unix.EAGAIN) || it.res == -int(unix.EINTR):
			wb := writerBufPool.Get().(*writerBuf)
			wb.b = append(wb.b[:0], seg[max(it.res, 0):]...)
			go c.finishWrite(wb, 0, it.w)
		default:
			c.writeAbandoned(&it.w, syscall.Errno(-it.res))
		}
		*it = batchItem{held: it.held}
	}
	b.n = 0
	if messages > 0 {
		stats.MessagesOut.Add(uint64(messages))
	}
}
