package transport

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// BenchmarkRoundTrip measures one message in and its echo out over a
// loopback connection: the read path (idle read, pooled reader, goroutine
// hand-off), HandleFrame, and the write path (queue, flush goroutine,
// pooled writer). Allocations include the client's.
func BenchmarkRoundTrip(b *testing.B) {
	for _, m := range readModes {
		if !m.parked && !pollerSupported {
			continue
		}
		b.Run(m.name, func(b *testing.B) { benchmarkRoundTrip(b, m) })
	}
}

func benchmarkRoundTrip(b *testing.B, m readMode) {
	ep := newFakeEndpoint()
	ep.echo = true
	ep.frameBuf = 1
	hs := newHarness(b, m, WebSocketConfig{}, ep)
	c := hs.dial(b, "vsn=2.0.0", ws.Dialer{})
	<-ep.opened
	msg := bytes.Repeat([]byte("x"), 100)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		c.writeFrame(ws.OpText, true, true, msg)
		if _, p := c.readFrame(); len(p) != len(msg) {
			b.Fatalf(
				"echo of %d bytes",
				len(p),
			)
		}
	}
}

// BenchmarkKernelFloor measures what the kernel charges for the two things
// every delivery does, whatever the server: enter a system call, and write
// a ~100-byte frame into a loopback TCP connection whose peer is reading
// (the kernel carries the segment through both ends' TCP stacks and wakes
// the reader, all on the writer's CPU time). A fan-out to N sockets costs
// at least N times the second figure; BENCHMARKS.md sets the latency
// figures against it. On Linux, fanout-N is the floor of
// BenchmarkFanoutCPU's workload: the same writes to N connections whose
// reader sleeps between broadcasts, which cost more than loopback-write's.
func BenchmarkKernelFloor(b *testing.B) {
	b.Run("syscall", func(b *testing.B) {
		for b.Loop() {
			syscall.Getppid()
		}
	})
	b.Run("loopback-write", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		frame := bytes.Repeat([]byte("x"), 110)
		for b.Loop() {
			if _, err := c.Write(frame); err != nil {
				b.Fatal(err)
			}
		}
		c.Close()
		<-done
	})
	kernelFloorFanout(b)
}

// BenchmarkFanout measures one 100-byte frame sent to each of 100
// loopback connections and written out by the writers: an op is one such
// broadcast, so allocs/op over 100 is the write path's allocations per
// delivery (the readers discard through io.Discard, which allocates
// nothing). Each op waits until every frame is written, so frames rarely
// share a write: this is the low-rate path, one write per delivery.
func BenchmarkFanout(b *testing.B) {
	const n = 100
	ep := newFakeEndpoint()
	hs := newHarness(b, eventMode, WebSocketConfig{}, ep)
	socks := make([]*fakeSocket, 0, n)
	for range n {
		c := hs.dial(b, "vsn=2.0.0", ws.Dialer{})
		socks = append(socks, <-ep.opened)
		go func() { _, _ = io.Copy(io.Discard, c.conn) }()
	}
	frame := channels.Frame{Data: bytes.Repeat([]byte("x"), 100)}
	out := &hs.h.Stats().MessagesOut
	want := out.Load()
	b.ReportAllocs()
	for b.Loop() {
		for _, s := range socks {
			if err := s.conn.Send(frame); err != nil {
				b.Fatal(err)
			}
		}
		want += n
		for out.Load() < want {
			runtime.Gosched() // the writers' counter is the only signal
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
}
