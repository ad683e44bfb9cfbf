//go:build linux

package transport

import (
	"io"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls of a bare connection (wsconn_fd.go).

// dupFD duplicates nc's descriptor, close-on-exec. The duplicate shares
// the socket and its flags (non-blocking) with the original.
func dupFD(nc connIO) (int32, error) {
	raw, err := syscallConn(nc)
	if err != nil {
		return 0, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return 0, err
	}
	if derr != nil {
		return 0, derr
	}
	return int32(fd), nil
}

// fileFD wraps a bare descriptor in an *os.File, which registers it with
// the runtime's poller (it is non-blocking) and owns it from then on.
func fileFD(fd int32) (connIO, error) {
	f := os.NewFile(uintptr(fd), "websocket")
	if f == nil {
		return nil, net.ErrClosed
	}
	return f, nil
}

// readFD is one read(2) on a non-blocking descriptor: errWouldBlock when
// nothing is there, io.EOF at the end of the stream. A raw system call:
// it returns at once (see rawWrite).
func readFD(fd int32, p []byte) (int, error) {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		switch errno {
		case 0:
			if n == 0 && len(p) > 0 {
				return 0, io.EOF
			}
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, errWouldBlock
		}
		return 0, errno
	}
}

func closeFD(fd int32) { _ = unix.Close(int(fd)) }

// shutdownWriteFD half-closes the socket (FIN after what was written).
func shutdownWriteFD(fd int32) { _ = unix.Shutdown(int(fd), unix.SHUT_WR) }

// peerAddrFD is the socket's peer address as text, "" if unknown.
func peerAddrFD(fd int32) string {
	sa, err := unix.Getpeername(int(fd))
	if err != nil {
		return ""
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
	case *unix.SockaddrInet6:
		return (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
	case *unix.SockaddrUnix:
		return a.Name
	}
	return ""
}
