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

	"github.com/channelsd/channelsd/test/childproc"
)

// kernelFloorFanout adds to BenchmarkKernelFloor a fanout-N for each size
// of BenchmarkFanoutCPU (fanoutSizes).
func kernelFloorFanout(b *testing.B) {
	for _, n := range fanoutSizes(b) {
		b.Run(fmt.Sprintf("fanout-%d", n), func(b *testing.B) { benchmarkFanoutFloor(b, n) })
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
// workload against.
func benchmarkFanoutFloor(b *testing.B, n int) {
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
	if line := childproc.Start(b, fmt.Sprintf("%s=%d ws://%s/", fanoutReaderEnv, n, ln.Addr()), "-test.run=^$"); line != "ready" {
		b.Fatalf("reader process: %q", line)
	}
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

	tick := time.NewTicker(fanoutInterval(b))
	defer tick.Stop()
	cpu0 := processCPU(b)
	for b.Loop() {
		<-tick.C
		for _, fd := range fds {
			// Raw, as the writers' small writes are (rawWrite): the
			// scheduler is not told of a call that does not block.
			w, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&frame[0])), uintptr(len(frame)))
			if errno != 0 || int(w) != len(frame) {
				b.Fatalf("write: %d of %d bytes: %v", w, len(frame), errno)
			}
		}
	}
	cpu := processCPU(b) - cpu0
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*n), "cpu-ns/write")
}
