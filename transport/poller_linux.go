//go:build linux

package transport

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pollerSupported: Linux has epoll.
const pollerSupported = true

// epollPoller is a poller on an epoll instance. An eventfd registered in
// it wakes a wait for the reactor to stop.
//
// Connections are registered level-triggered and one-shot: EPOLLIN for
// data (and for the end of the stream, which read reports), EPOLLRDHUP for
// the peer's half-close, and EPOLLONESHOT so that one readiness starts one
// reader; EPOLLERR and EPOLLHUP are always reported. The Go runtime's own
// poller watches the same descriptors (edge-triggered, for the goroutines
// that read and write them); the two do not interfere: ours only tells
// when to start a reader, which then reads through the net.Conn.
//
// The epoll descriptor itself is non-blocking and watched by the Go
// runtime's poller too (an epoll instance is readable while it has events
// to report), through an *os.File: the poll loop's goroutine parks there
// between events, like any goroutine waiting to read, and takes the
// events with an epoll_wait that does not block. A blocking epoll_wait
// would hold a thread in a system call with its P, which the runtime's
// monitor must take back each time there is other work; with the loop
// going back to wait after every few events (a join storm), that kept
// the monitor polling every 20 µs: 8 % of the node's CPU in a 10,000-
// socket connect storm, 5-6 % with this (other system calls remain).
//
// The event's 64-bit data is the fd (Fd) and the registration's
// generation (Pad), on every architecture's layout of unix.EpollEvent.
type epollPoller struct {
	epfd int
	f    *os.File // epfd, for the runtime's poller; owns and closes it
	rc   syscall.RawConn
	evfd int
	evs  []unix.EpollEvent

	// The wait in progress (poll's arguments and results), owned by
	// the poll loop.
	waitFn func(fd uintptr) bool
	cur    []unix.EpollEvent
	n      int
	err    error
}

const epollReadEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller() (poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("epoll descriptor non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(evfd)
		_ = f.Close()
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	p := &epollPoller{epfd: epfd, f: f, rc: rc, evfd: evfd, evs: make([]unix.EpollEvent, pollBatch)}
	p.waitFn = p.poll
	return p, nil
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
	p.cur, p.n, p.err = evs, 0, nil
	// Parks in the runtime's poller until epfd is readable, as often as
	// poll finds nothing.
	if err := p.rc.Read(p.waitFn); err != nil {
		return 0, fmt.Errorf("epoll descriptor: %w", err)
	}
	n, err := p.n, p.err
	p.cur = nil
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

// poll takes the events epfd has now, without waiting (a raw system
// call: it never blocks), and reports whether there were any, or an
// error: if not, the runtime's poller waits for epfd to become readable.
func (p *epollPoller) poll(fd uintptr) bool {
	evs := p.cur
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(unsafe.SliceData(evs))), uintptr(len(evs)), 0, 0, 0)
		switch errno {
		case 0:
			p.n = int(r)
			return p.n > 0
		case unix.EINTR:
			// Events may be waiting: going to the runtime's poller
			// now could miss them until the next one.
			continue
		default:
			p.err = errno
			return true
		}
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
	err2 := p.f.Close()
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
	raw, err := syscallConn(nc)
	if err != nil {
		return 0, false
	}
	fd := int32(-1)
	if err := raw.Control(func(f uintptr) { fd = int32(f) }); err != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}

// syscallConn returns the descriptor access of a plain TCP or Unix
// connection, or of the *os.File of an attached bare one (wsconn_fd.go),
// and errWouldBlock for any other (crypto/tls, or a wrapper that may
// buffer): only a plain one's descriptor tells the whole story of its
// reads and writes.
func syscallConn(nc connIO) (syscall.RawConn, error) {
	switch c := nc.(type) {
	case *net.TCPConn:
		return c.SyscallConn()
	case *net.UnixConn:
		return c.SyscallConn()
	case *os.File:
		return c.SyscallConn()
	}
	return nil, errWouldBlock
}
