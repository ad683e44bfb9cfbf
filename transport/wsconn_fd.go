package transport

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"time"
)

// How a connection that waits in the reactor holds its socket: a bare
// descriptor, not a net.Conn.
//
// A net.Conn costs an idle connection about 900 bytes that are not its
// own: the runtime's poll descriptor for it (allocated off the heap, kept
// for reuse, never returned to the OS: ~600 bytes with its timers and the
// runtime's other per-descriptor records), the netFD, both addresses
// and their socket address structs, a finalizer. That was a third of a
// node's memory per idle joined socket (BENCHMARKS.md, "2026-12-07 —
// memory per idle joined socket"). So when a connection goes to wait in
// the reactor (arm) with nothing else using nc (no writer, not closing),
// it keeps a duplicate of nc's descriptor and closes nc (detach): the
// socket stays open, held by the duplicate, and the poll descriptor goes
// back to the runtime's cache for the next connection. The reactor then
// watches the duplicate. (A writer on the connection as it arms lets nc
// go when it leaves, leaveWriteLocked.)
//
// A bare connection reads and writes with system calls on the descriptor,
// which never wait: a burst reads frames that have arrived (a readable
// descriptor has them), and the writers' writes were non-blocking
// already. Only a wait needs the runtime's poller: the rest of a frame
// still on its way, a write the kernel did not take whole, the close
// handshake. Then the connection wraps its descriptor in an *os.File,
// which registers it with the runtime's poller under the same number
// (attach), and uses that as nc with the deadlines it would have set; it
// detaches again when it next waits in the reactor with nc unused.
//
// The descriptor must not be closed while a system call on it is in
// progress (the kernel would hand its number to the next socket, whose
// bytes the call would then read or write): raw calls on a bare
// descriptor are counted in fdState, and closeNC leaves the close to the
// last of them. Through nc, the runtime does the same with its own count.
//
// Every field involved is guarded by wsConn.mu; nc changes only under it
// (attach: nil to a file; detach: to nil, by the owner of the read side
// with no writer on the connection), so a party that holds the read side
// or the write side and found nc set may use it without the lock.

// connIO is what a connection reads and writes through when it may wait:
// the upgraded net.Conn, or an *os.File over its bare descriptor.
type connIO interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// fdClosedBit is wsConn.fdState's closed flag; the bits below it count
// raw calls (at most three at once: the reader, a writer, a log line's
// address).
const fdClosedBit = 0x80

func (c *wsConn) fdClosed() bool  { return c.fdState&fdClosedBit != 0 }
func (c *wsConn) rawUsers() uint8 { return c.fdState &^ fdClosedBit }

// holdFDLocked counts a raw system call about to be made on the bare
// descriptor, and reports false when there is none (nc is set, or the
// descriptor is closed). Called with c.mu held; releaseFDLocked ends it.
func (c *wsConn) holdFDLocked() bool {
	if c.nc != nil || c.fdClosed() {
		return false
	}
	c.fdState++
	return true
}

// releaseFDLocked ends a raw system call counted by holdFDLocked, closing
// the descriptor if closeNC asked for it meanwhile. Called with c.mu held.
func (c *wsConn) releaseFDLocked() {
	c.fdState--
	if c.fdState == fdClosedBit {
		c.closeNowLocked()
	}
}

// closeFDLocked closes the connection's descriptor, through nc when
// attached, at once or, during raw calls, when the last one ends. Further
// calls do nothing. Called with c.mu held, after the connection left the
// reactor (reactor.go, "Reused fds").
func (c *wsConn) closeFDLocked() {
	if c.fdClosed() {
		return
	}
	c.fdState |= fdClosedBit
	if c.rawUsers() == 0 {
		c.closeNowLocked()
	}
}

func (c *wsConn) closeNowLocked() {
	if c.nc != nil {
		_ = c.nc.Close()
		return
	}
	closeFD(c.fd)
}

// attachLocked returns nc, wrapping the bare descriptor in one first (see
// above) with the deadlines the connection's state asks for: while
// closing, the close deadline for writes and an immediate one for reads
// (a reader that would wait now stops, and ends the connection as a
// closing reader does); otherwise the read deadline the reader last set.
// Writers set their own write deadline. Called with c.mu held.
func (c *wsConn) attachLocked() (connIO, error) {
	if c.nc != nil {
		return c.nc, nil
	}
	if c.fdClosed() {
		return nil, net.ErrClosed
	}
	f, err := fileFD(c.fd)
	if err != nil {
		return nil, err
	}
	c.nc = f
	c.h.stats.Attached.Add(1)
	switch {
	case c.closing:
		_ = f.SetWriteDeadline(deadlineTime(c.deadline))
		_ = f.SetReadDeadline(time.Now())
	case c.deadline != 0:
		_ = f.SetReadDeadline(deadlineTime(c.deadline))
	}
	return f, nil
}

// detachLocked lets go of nc as the connection goes to wait in r, keeping
// a duplicate of its descriptor (see above), unless something may use nc
// meanwhile: a writer (flushing), the close handshake, a raw call. The
// connection's registration moves to the duplicate's number; arm
// registers it afresh. Called with c.mu held by the owner of the read
// side.
func (c *wsConn) detachLocked(r *reactor) {
	if c.nc == nil || c.flushing || c.closing || c.fdState != 0 {
		return
	}
	fd, err := dupFD(c.nc)
	if err != nil {
		// The connection stays attached: it costs more, nothing else.
		c.h.log.Debug("transport: keeping the connection's net.Conn: its descriptor could not be duplicated", "err", err)
		return
	}
	if c.registered {
		r.forget(c)
		if err := r.p.del(c.fd); err != nil {
			c.h.log.Error("transport: removing a connection from the poller", "err", err)
		}
		c.registered = false
	}
	old := c.nc
	c.nc, c.fd = nil, fd
	_ = old.Close()
	c.h.stats.Detached.Add(1)
}

// detachArmedLocked is detachLocked for a connection that waits in the
// poller, by the writer that leaves it: the registration moves to the
// duplicate at once, the connection staying armed (a stale event of the
// old registration carries an old generation). Should the reactor refuse
// it, the connection goes to a parked reader, as arm does. Called with
// c.mu held, c armed.
func (c *wsConn) detachArmedLocked() {
	r := c.r
	c.detachLocked(r)
	if c.nc != nil || c.registered {
		return // kept its file
	}
	c.gen = r.nextGen()
	if err := r.register(c); err != nil {
		if !errors.Is(err, errReactorStopped) {
			c.h.log.Error("transport: poller refused a connection; it falls back to a parked reader", "err", err)
		}
		c.claimLocked()
		c.deregisterLocked()
		go c.readLoop()
	}
}

// read reads into p: from the bare descriptor without waiting, or through
// nc, attaching first when the descriptor has nothing yet (the rest of a
// frame on its way), so that the read waits with its deadline.
func (c *wsConn) read(p []byte) (int, error) {
	c.mu.Lock()
	nc := c.nc
	if nc == nil {
		if !c.holdFDLocked() {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		fd := c.fd
		c.mu.Unlock()
		n, err := readFD(fd, p)
		c.mu.Lock()
		c.releaseFDLocked()
		if err != errWouldBlock {
			c.mu.Unlock()
			return n, err
		}
		if nc, err = c.attachLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
	}
	c.mu.Unlock()
	return nc.Read(p)
}

// remote is the client's address for a log line, found only when the
// line is written (a bare connection asks the kernel). It takes c.mu:
// never log it with c.mu held.
type remote struct{ c *wsConn }

func (r remote) LogValue() slog.Value {
	c := r.c
	c.mu.Lock()
	switch nc := c.nc.(type) {
	case net.Conn:
		c.mu.Unlock()
		return slog.StringValue(nc.RemoteAddr().String())
	case *os.File:
		c.mu.Unlock()
		var addr string
		if raw, err := nc.SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) { addr = peerAddrFD(int32(fd)) })
		}
		return slog.StringValue(addr)
	}
	held := c.holdFDLocked()
	fd := c.fd
	c.mu.Unlock()
	if !held {
		return slog.StringValue("")
	}
	addr := peerAddrFD(fd)
	c.mu.Lock()
	c.releaseFDLocked()
	c.mu.Unlock()
	return slog.StringValue(addr)
}
