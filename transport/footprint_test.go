//go:build !race

// The race detector changes stack sizes and heap layout; this test
// measures the real thing.

package transport

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// deepStack uses about depth KiB of stack, as decoding a join, running a
// channel's callbacks and encoding the reply may.
//
//go:noinline
func deepStack(depth int) int {
	var pad [1024]byte
	pad[depth%len(pad)] = byte(depth)
	if depth == 0 {
		return int(pad[0])
	}
	return deepStack(depth-1) + int(pad[depth%len(pad)])
}

// TestIdleFootprint opens connections, has each handle a frame with deep
// stack work, lets them go idle, and measures what they keep: one parked
// goroutine per connection with a small stack, and no I/O buffers.
func TestIdleFootprint(t *testing.T) {
	if testing.Short() {
		t.Skip("opens many connections")
	}
	const n = 1000
	ep := newFakeEndpoint()
	ep.echo = true
	ep.frameBuf = 1
	ep.onFrame = func(*fakeSocket, []byte, bool) { deepStack(32) }
	hs := newHarness(t, WebSocketConfig{}, ep)
	// Warm up pools and the runtime's starting stack size.
	warm := hs.dial(t, "", ws.Dialer{})
	warm.send("warm")
	warm.expectFrame(ws.OpText, "warm")
	<-ep.opened

	settle := func(want int) {
		deadline := time.Now().Add(waitLimit)
		for runtime.NumGoroutine() > want {
			if time.Now().After(deadline) {
				t.Fatalf(
					"%d goroutines, want %d",
					runtime.NumGoroutine(), want,
				)
			}
			runtime.Gosched()
		}
		runtime.GC()
		runtime.GC()
	}
	g0 := runtime.NumGoroutine()
	settle(g0)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rss0 := rss()

	for range n {
		c := hs.dial(t, "vsn=2.0.0", ws.Dialer{})
		c.send("join")
		c.expectFrame(ws.OpText, "join")
		<-ep.opened
	}
	// One parked reader per connection, nothing else: no writer, no
	// burst goroutine left.
	settle(g0 + n)
	runtime.ReadMemStats(&after)
	rss1 := rss()

	stack := float64(after.StackInuse-before.StackInuse) / n
	heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / n
	t.Logf("per idle connection: stack %.0f B, heap %.0f B (both ends of the connection, fakes included), RSS %.0f B; goroutines +%d",
		stack, heap, float64(rss1-rss0)/n, runtime.NumGoroutine()-g0)
	if stack > 4096 {
		t.Errorf(
			"%.0f bytes of stack per idle connection, want at most 4096: the reader keeps the stack that handling a frame grew",
			stack,
		)
	}
	if heap > 8192 {
		t.Errorf(
			"%.0f bytes of heap per idle connection (both ends), want at most 8192: buffers held while idle?",
			heap,
		)
	}
}

// rss returns the resident set size in bytes, or 0 where /proc is missing.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
