//go:build linux

package transport

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// pollerSupported: Linux has epoll.
const pollerSupported = true

// epollPoller is a poller on an epoll instance. An eventfd registered in
// it wakes a wait for the reactor to stop (closing an epoll descriptor
// does not end an epoll_wait in progress).
//
// Connections are registered level-triggered and one-shot: EPOLLIN for
// data (and for the end of the stream, which read reports), EPOLLRDHUP for
// the peer's half-close, and EPOLLONESHOT so that one readiness starts one
// reader; EPOLLERR and EPOLLHUP are always reported. The Go runtime's own
// poller watches the same descriptors (edge-triggered, for the goroutines
// that read and write them); the two do not interfere: ours only tells
// when to start a reader, which then reads through the net.Conn.
//
// The event's 64-bit data is the fd (Fd) and the registration's
// generation (Pad), on every architecture's layout of unix.EpollEvent.
type epollPoller struct {
	epfd int
	evfd int
	evs  []unix.EpollEvent
}

const epollReadEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller() (poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(evfd)
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return &epollPoller{epfd: epfd, evfd: evfd, evs: make([]unix.EpollEvent, pollBatch)}, nil
}

func (p *epollPoller) add(fd int32, gen uint32) error {
	ev := unix.EpollEvent{Events: epollReadEvents, Fd: fd, Pad: int32(gen)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
}

func (p *epollPoller) rearm(fd int32, gen uint32) error {
	ev := unix.EpollEvent{Events: epollReadEvents, Fd: fd, Pad: int32(gen)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
}

func (p *epollPoller) del(fd int32) error {
	// A non-nil event for kernels before 2.6.9.
	var ev unix.EpollEvent
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), &ev)
}

func (p *epollPoller) wait(out []pollEvent) (int, error) {
	evs := p.evs[:min(len(p.evs), len(out))]
	for {
		// A blocking system call: the runtime hands this thread's P to
		// other goroutines while it waits.
		n, err := unix.EpollWait(p.epfd, evs, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("epoll_wait: %w", err)
		}
		k := 0
		for i := range evs[:n] {
			ev := &evs[i]
			if int(ev.Fd) == p.evfd {
				var b [8]byte
				_, _ = unix.Read(p.evfd, b[:]) // reset the counter; EAGAIN if already read
				continue
			}
			out[k] = pollEvent{fd: ev.Fd, gen: uint32(ev.Pad)}
			k++
		}
		return k, nil
	}
}

func (p *epollPoller) wake() error {
	// Adds to the counter a uint64 in native byte order: 1 or 1<<56,
	// either nonzero, which is all a wake needs.
	b := [8]byte{0: 1}
	_, err := unix.Write(p.evfd, b[:])
	if err == unix.EAGAIN {
		return nil // the counter is saturated: a wake is pending anyway
	}
	return err
}

func (p *epollPoller) close() error {
	err1 := unix.Close(p.evfd)
	err2 := unix.Close(p.epfd)
	if err1 != nil {
		return err1
	}
	return err2
}

// connFD returns the descriptor of a plain TCP or Unix connection. Other
// connections (crypto/tls, or a wrapper that may buffer what it has read)
// are not watched: readiness of the descriptor would not tell whether a
// frame is waiting. The descriptor stays the connection's until it is
// closed, which the transport does only after removing it from the
// poller.
func connFD(nc net.Conn) (int32, bool) {
	raw, err := plainRawConn(nc)
	if err != nil {
		return 0, false
	}
	fd := int32(-1)
	if err := raw.Control(func(f uintptr) { fd = int32(f) }); err != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}

// plainRawConn returns the descriptor access of a plain TCP or Unix
// connection, and errWouldBlock for any other (crypto/tls, or a wrapper
// that may buffer): only a plain one's descriptor tells the whole story
// of its reads and writes.
func plainRawConn(nc net.Conn) (syscall.RawConn, error) {
	switch c := nc.(type) {
	case *net.TCPConn:
		return c.SyscallConn()
	case *net.UnixConn:
		return c.SyscallConn()
	}
	return nil, errWouldBlock
}
