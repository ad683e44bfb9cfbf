package transport

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
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
