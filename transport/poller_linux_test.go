//go:build linux

package transport

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEpollPollerNoLostEvents: the poll loop parks in the runtime's
// poller between events; an event that arrives just before it parks,
// while it parks, or while nothing waits is reported all the same, with
// its registration's generation, and a wake ends a wait with no event.
func TestEpollPollerNoLostEvents(t *testing.T) {
	pl, err := newPoller()
	if err != nil {
		t.Fatal(err)
	}
	p := pl.(*epollPoller)
	defer func() {
		if err := p.close(); err != nil {
			t.Error(err)
		}
	}()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	rfd := int32(fds[0])

	type result struct {
		n   int
		ev  pollEvent
		err error
	}
	waits := make(chan result, 1)
	wait := func() {
		evs := make([]pollEvent, pollBatch)
		n, err := p.wait(evs)
		waits <- result{n, evs[0], err}
	}
	expect := func(round int, gen uint32) {
		t.Helper()
		select {
		case r := <-waits:
			if r.err != nil || r.n != 1 || r.ev != (pollEvent{fd: rfd, gen: gen}) {
				t.Fatalf("round %d: wait returned %d events (first %+v), %v; want fd %d gen %d", round, r.n, r.ev, r.err, rfd, gen)
			}
		case <-time.After(waitLimit):
			t.Fatalf("round %d: the event was lost", round)
		}
	}
	var b [1]byte
	for round := range 2000 {
		gen := uint32(round + 1)
		var err error
		if round == 0 {
			err = p.add(rfd, gen)
		} else {
			err = p.rearm(rfd, gen)
		}
		if err != nil {
			t.Fatal(err)
		}
		// The byte arrives before the wait begins, as it begins, or
		// (most often) once it is parked.
		if round%3 == 0 {
			_, _ = unix.Write(fds[1], b[:])
			go wait()
		} else {
			go wait()
			if round%3 == 1 {
				// Not synchronisation (the result is awaited
				// below): it only makes a parked wait likely.
				time.Sleep(50 * time.Microsecond)
			}
			_, _ = unix.Write(fds[1], b[:])
		}
		expect(round, gen)
		if _, err := unix.Read(fds[0], b[:]); err != nil {
			t.Fatal(err)
		}
	}

	// A one-shot registration reports nothing until re-armed; a wake
	// ends the wait with no event.
	_, _ = unix.Write(fds[1], b[:])
	go wait()
	if err := p.wake(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waits:
		if r.err != nil || r.n != 0 {
			t.Fatalf("woken wait returned %d events, %v; want none", r.n, r.err)
		}
	case <-time.After(waitLimit):
		t.Fatal("wake did not end the wait")
	}
}

// setBareSendBuffer is setSendBuffer for a bare or attached connection.
// Called with c.mu held.
func setBareSendBuffer(c *wsConn, n int) error {
	return unix.SetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_SNDBUF, n)
}
