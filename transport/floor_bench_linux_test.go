//go:build linux

package transport

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// kernelFloorFanout adds to BenchmarkKernelFloor a fanout-N for each size
// of BenchmarkFanoutCPU (fanoutSizes).
func kernelFloorFanout(b *testing.B) {
	for _, n := range fanoutSizes(b) {
		b.Run(fmt.Sprintf("fanout-%d", n), func(b *testing.B) { benchmarkFanoutFloor(b, n, false) })
		b.Run(fmt.Sprintf("fanout-%d-uring", n), func(b *testing.B) { benchmarkFanoutFloor(b, n, true) })
	}
}

// benchmarkFanoutFloor is BenchmarkFanoutCPU's workload with nothing of
// the server in it: the same N WebSocket connections read by the same
// child process, and per op, at 10 ops a second (fanoutInterval), one
// pre-encoded frame of the same 100-byte payload written to each by a
// bare loop of non-blocking write(2). cpu-ns/write is this process's CPU
// time (getrusage) over the ops divided by the writes: what the kernel
// charges a writer for one delivery to one of N connections whose reader
// sleeps between broadcasts, which is dearer than loopback-write's hot
// connection. It is the floor to set a server's CPU per delivery in this
// workload against. With uring (fanout-N-uring) the same sends go in
// batches of sendRingEntries, one io_uring_enter(2) each, as the writers
// make them where they can: the floor of that way of writing.
func benchmarkFanoutFloor(b *testing.B, n int, uring bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	// The server side is a bare listener and gobwas's upgrade, so that
	// this process runs nothing but the loop once the clients are in.
	accepted := make(chan []net.Conn, 1)
	go func() {
		conns := make([]net.Conn, 0, n)
		defer func() { accepted <- conns }()
		for len(conns) < n {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if _, err := ws.Upgrade(c); err != nil {
				_ = c.Close()
				return
			}
			conns = append(conns, c)
		}
	}()
	// Runs after the child's cleanup (LIFO), which closes its ends.
	b.Cleanup(func() {
		_ = ln.Close()
		for _, c := range <-accepted {
			_ = c.Close()
		}
	})
	reader := startFanoutReader(b, n, fmt.Sprintf("ws://%s/", ln.Addr()))
	conns := <-accepted
	accepted <- conns // for the cleanup
	if len(conns) != n {
		b.Fatalf("%d of %d connections accepted", len(conns), n)
	}
	fds := make([]uintptr, n)
	for i, c := range conns {
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			b.Fatal(err)
		}
		// The descriptor stays open until the cleanup closes c.
		if err := raw.Control(func(fd uintptr) { fds[i] = fd }); err != nil {
			b.Fatal(err)
		}
	}

	var buf bytes.Buffer
	if err := ws.WriteHeader(&buf, ws.Header{Fin: true, OpCode: ws.OpText, Length: 100}); err != nil {
		b.Fatal(err)
	}
	buf.Write(bytes.Repeat([]byte("x"), 100))
	frame := buf.Bytes()

	var ring *sendRing
	var ringBufs [][]byte
	var ringFDs, ringRes []int32
	if uring {
		var err error
		if ring, err = newSendRing(); err != nil {
			b.Skip(err)
		}
		defer ring.close()
		for _, fd := range fds {
			ringFDs = append(ringFDs, int32(fd))
			ringBufs = append(ringBufs, frame)
		}
		ringRes = make([]int32, sendRingEntries)
	}
	tick := time.NewTicker(fanoutInterval(b))
	defer tick.Stop()
	cpu0, rcpu0 := processCPU(b), reader.cpu(b)
	for b.Loop() {
		<-tick.C
		if ring != nil {
			for i := 0; i < n; i += sendRingEntries {
				j := min(i+sendRingEntries, n)
				if err := ring.sendAll(ringFDs[i:j], ringBufs[i:j], ringRes); err != nil {
					b.Fatal(err)
				}
				for _, r := range ringRes[:j-i] {
					if int(r) != len(frame) {
						b.Fatalf("io_uring send: %d of %d bytes", r, len(frame))
					}
				}
			}
			continue
		}
		for _, fd := range fds {
			// Raw, as the writers' small writes are (rawWrite): the
			// scheduler is not told of a call that does not block.
			w, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&frame[0])), uintptr(len(frame)))
			if errno != 0 || int(w) != len(frame) {
				b.Fatalf("write: %d of %d bytes: %v", w, len(frame), errno)
			}
		}
	}
	cpu, rcpu := processCPU(b)-cpu0, reader.cpu(b)-rcpu0
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*n), "cpu-ns/write")
	b.ReportMetric(float64(rcpu.Nanoseconds())/float64(b.N*n), "reader-cpu-ns/write")
}
