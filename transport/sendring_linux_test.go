//go:build linux

package transport

import (
	"bytes"
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// newTestRing is a send ring, or a skip where io_uring is not to be had.
func newTestRing(t *testing.T) *sendRing {
	t.Helper()
	r, err := newSendRing()
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	t.Cleanup(r.close)
	return r
}

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func fdOf(t *testing.T, c *net.TCPConn) int32 {
	t.Helper()
	fd, ok := connFD(c)
	if !ok {
		t.Fatal("no descriptor")
	}
	return fd
}

func TestSendRingSendsEachBufferToItsSocket(t *testing.T) {
	r := newTestRing(t)
	c1, s1 := tcpPair(t)
	c2, s2 := tcpPair(t)
	// A descriptor that is not open fails its own send, not the batch.
	fds := []int32{fdOf(t, s1), -1, fdOf(t, s2)}
	bufs := [][]byte{[]byte("to one"), []byte("to none"), []byte("to two, longer")}
	res := make([]int32, 3)
	// Twice: the ring's indices move on between batches.
	for range 2 {
		if err := r.sendAll(fds, bufs, res); err != nil {
			t.Fatal(err)
		}
		if res[0] != 6 || res[1] != -int32(unix.EBADF) || res[2] != 14 {
			t.Fatalf("results %v, want [6 %d 14]", res, -int32(unix.EBADF))
		}
		for i, c := range []*net.TCPConn{c1, nil, c2} {
			if c == nil {
				continue
			}
			got := make([]byte, len(bufs[i]))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, bufs[i]) {
				t.Fatalf("socket %d read %q, %v", i, got, err)
			}
		}
	}
}

func TestSendRingDoesNotWaitForAFullSocket(t *testing.T) {
	r := newTestRing(t)
	_, s := tcpPair(t) // the client never reads
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	res := make([]int32, 1)
	// A loopback socket takes a few MiB before its peer's window and
	// its own buffer are full; then a send must take part or none of a
	// chunk and return, not wait.
	for i := 0; ; i++ {
		if i == 256 {
			t.Fatal("256 MiB sent to a client that does not read")
		}
		if err := r.sendAll([]int32{fdOf(t, s)}, [][]byte{chunk}, res); err != nil {
			t.Fatal(err)
		}
		if res[0] == -int32(unix.EAGAIN) || (res[0] >= 0 && int(res[0]) < len(chunk)) {
			return
		}
		if res[0] != int32(len(chunk)) {
			t.Fatalf("send: %d", res[0])
		}
	}
}
