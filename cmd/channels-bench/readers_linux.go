package main

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// epollReaders reads every subscriber's socket from a few threads, each
// waiting on its own level-triggered epoll set and reading a ready socket
// once per wakeup into one shared buffer.
//
// Why not a goroutine per socket, as the other scenarios do: Go's
// netpoller makes each delivery cost an epoll wakeup, a goroutine switch
// and two reads (the second one to learn the socket is drained), and the
// client then outspent the node it measures by several times, on the same
// two cores. Latency measured that way was mostly the client's own queue.
// Here a delivery costs one read(2) and a frame parse without allocating.
type epollReaders struct {
	eps     []int
	subs    []*subscriber // by fd
	stopped atomic.Bool
	wg      sync.WaitGroup
}

// startReaders takes the subscribers' sockets over (takeOver), spread
// over workers epoll sets, and starts a thread reading each set.
func startReaders(all []*subscriber, workers int) (stop func(), err error) {
	eps, err := newEpollSets(workers)
	if err != nil {
		return nil, err
	}
	p := &epollReaders{eps: eps}
	for i, s := range all {
		fd, err := takeOver(s.conn, p.eps[i%workers])
		if err != nil {
			p.closeAll()
			return nil, fmt.Errorf("subscriber: %w", err)
		}
		s.fd = fd
		for fd >= len(p.subs) {
			p.subs = append(p.subs, nil)
		}
		p.subs[fd] = s
	}
	for _, ep := range p.eps {
		p.wg.Add(1)
		go p.run(ep)
	}
	return func() {
		p.stopped.Store(true)
		p.wg.Wait()
		p.closeAll()
	}, nil
}

// newEpollSets creates n epoll sets, or none.
func newEpollSets(n int) ([]int, error) {
	eps := make([]int, 0, n)
	for range n {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			for _, e := range eps {
				_ = unix.Close(e)
			}
			return nil, fmt.Errorf("epoll: %w", err)
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

// takeOver moves c's connection from Go's netpoller to epoll set ep: its
// descriptor is duplicated, c closed (close(2) of one of two descriptors
// sends nothing) and the duplicate added to ep. The caller closes the
// returned descriptor; c.Close afterwards does nothing more.
func takeOver(c net.Conn, ep int) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, errors.New("connection has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var fd int
	var dupErr error
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.Dup(int(f)) }); err != nil || dupErr != nil {
		return -1, fmt.Errorf("dup: %v %v", err, dupErr)
	}
	_ = c.Close()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("epoll_ctl: %w", err)
	}
	return fd, nil
}

func (p *epollReaders) run(ep int) {
	defer p.wg.Done()
	readEpoll(ep, &p.stopped, func(fd int, b []byte) {
		p.subs[fd].feed(b, time.Now().UnixNano())
	})
}

// readEpoll reads each socket of ep once per readiness into one buffer
// and hands what it read to got (nil: discard), until stopped. A socket
// at its end, or failed, leaves ep: it delivers nothing more.
func readEpoll(ep int, stopped *atomic.Bool, got func(fd int, b []byte)) {
	events := make([]unix.EpollEvent, 512)
	buf := make([]byte, 256<<10)
	for !stopped.Load() {
		// The timeout only bounds how long a stop waits.
		n, err := unix.EpollWait(ep, events, 50)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for i := range n {
			fd := int(events[i].Fd)
			k, err := unix.Read(fd, buf)
			switch {
			case k > 0:
				if got != nil {
					got(fd, buf[:k])
				}
			case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			default:
				_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil)
			}
		}
	}
}

func (p *epollReaders) closeAll() {
	for _, ep := range p.eps {
		_ = unix.Close(ep)
	}
	for fd, s := range p.subs {
		if s != nil {
			_ = unix.Close(fd)
		}
	}
	p.eps, p.subs = nil, nil
}

// drainer reads and discards what the server sends to idle sockets (the
// room's presence diffs), from one thread per epoll set, for the reasons
// given at epollReaders: a goroutine per socket decoding every frame made
// three client processes, not the nodes, the limit of a 45,000-socket
// join storm (each join's diff reaches the room's 450 sockets).
type drainer struct {
	eps     []int
	mu      sync.Mutex
	fds     []int
	next    int
	stopped atomic.Bool
	wg      sync.WaitGroup
}

func newDrainer(workers int) (*drainer, error) {
	eps, err := newEpollSets(workers)
	if err != nil {
		return nil, err
	}
	d := &drainer{eps: eps}
	for _, ep := range d.eps {
		d.wg.Add(1)
		go d.run(ep)
	}
	return d, nil
}

// add takes c over (takeOver) into the next epoll set; close closes it.
func (d *drainer) add(c net.Conn) error {
	d.mu.Lock()
	ep := d.eps[d.next%len(d.eps)]
	d.next++
	d.mu.Unlock()
	fd, err := takeOver(c, ep)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.fds = append(d.fds, fd)
	d.mu.Unlock()
	return nil
}

func (d *drainer) run(ep int) {
	defer d.wg.Done()
	readEpoll(ep, &d.stopped, nil)
}

// close stops the threads, then closes every socket.
func (d *drainer) close() {
	d.stopped.Store(true)
	d.wg.Wait()
	for _, ep := range d.eps {
		_ = unix.Close(ep)
	}
	d.mu.Lock()
	for _, fd := range d.fds {
		_ = unix.Close(fd)
	}
	d.fds = nil
	d.mu.Unlock()
}
