//go:build linux

package transport

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawWrite is one non-blocking write(2) on a connection's descriptor,
// made inside syscall.RawConn.Control, which holds the descriptor open for
// the call (a concurrent Close cannot hand its number to another
// connection meanwhile). Its callback is bound once, so a write allocates
// nothing but the RawConn.
//
// Control rather than RawConn.Write: Write also takes the descriptor's
// write lock and resets its poll state for a wait that a writer never
// makes; a connection has one writer at a time anyway (wsConn.flushing).
//
// A write of up to rawSyscallMax bytes is a raw system call, which does
// not tell the scheduler that the thread is in the kernel. A non-blocking
// write into a socket returns within microseconds, and telling the
// scheduler costs more than that at a fan-out's rate: with every P busy,
// the runtime's monitor takes the P of a thread it finds in a system
// call and hands it to another thread, and the thread must get one back
// when the call returns (profiles of a 5,000-subscriber fan-out showed
// the monitor at 9 % of the node's CPU, and 0.4 nanosleep and 0.25 futex
// calls per delivery, besides the one write). Bigger writes, which take
// longer to copy, still go through syscall.Syscall.
type rawWrite struct {
	fn  func(fd uintptr)
	b   []byte
	n   int
	err error
}

// rawSyscallMax is the largest write made as a raw system call.
const rawSyscallMax = 16 << 10

func (w *rawWrite) init() { w.fn = w.call }

func (w *rawWrite) call(fd uintptr) {
	if len(w.b) > rawSyscallMax {
		w.n, w.err = unix.Write(int(fd), w.b)
		return
	}
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.b))), uintptr(len(w.b)))
	if errno != 0 {
		w.n, w.err = 0, errno
		return
	}
	w.n, w.err = int(n), nil
}

// write writes what the kernel takes of b now. It returns errWouldBlock
// when that is nothing, and for a connection with no plain descriptor.
func (w *rawWrite) write(nc connIO, b []byte) (int, error) {
	raw, err := syscallConn(nc)
	if err != nil {
		return 0, err
	}
	w.b = b
	err = raw.Control(w.fn)
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

// writeFD is write on a bare descriptor (wsconn_fd.go), which the caller
// keeps open for the call (holdFDLocked).
func (w *rawWrite) writeFD(fd int32, b []byte) (int, error) {
	w.b = b
	w.call(uintptr(fd))
	n, err := w.n, w.err
	w.b, w.n, w.err = nil, 0, nil
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	}
	return n, nil
}
