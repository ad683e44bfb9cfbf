//go:build linux

package transport

import (
	"net"

	"golang.org/x/sys/unix"
)

// rawWrite is one non-blocking write(2) on a connection's descriptor,
// through syscall.RawConn.Write, which holds the descriptor open for the
// call (a concurrent Close cannot hand its number to another connection
// meanwhile). Its callback is bound once, so a write allocates nothing
// but the RawConn.
type rawWrite struct {
	fn  func(fd uintptr) bool
	b   []byte
	n   int
	err error
}

func (w *rawWrite) init() { w.fn = w.call }

func (w *rawWrite) call(fd uintptr) bool {
	w.n, w.err = unix.Write(int(fd), w.b)
	// true: one attempt; RawConn.Write must not wait for writability,
	// which is what the caller's fallback goroutine is for.
	return true
}

// write writes what the kernel takes of b now. It returns errWouldBlock
// when that is nothing, and for a connection with no plain descriptor.
func (w *rawWrite) write(nc net.Conn, b []byte) (int, error) {
	raw, err := plainRawConn(nc)
	if err != nil {
		return 0, err
	}
	w.b = b
	err = raw.Write(w.fn)
	n, werr := w.n, w.err
	w.b, w.n, w.err = nil, 0, nil
	switch {
	case err != nil:
		return 0, err
	case werr == unix.EAGAIN || werr == unix.EINTR:
		return 0, errWouldBlock
	case werr != nil:
		return 0, werr
	}
	return n, nil
}
