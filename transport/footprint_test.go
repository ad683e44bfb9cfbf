//go:build !race

// The race detector changes stack sizes and heap layout; this test
// measures the real thing.

package transport

import (
	"os"
	"runtime"
	"runtime/debug"
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
// stack work, lets them go idle, and measures what they keep, in each read
// mode. No I/O buffers in either. With event-driven reads, no goroutine:
// the goroutine count does not grow with the connections, and neither
// does the stack in use. With parked reads, one parked goroutine per
// connection with a small stack.
func TestIdleFootprint(t *testing.T) {
	if testing.Short() {
		t.Skip("opens many connections")
	}
	inReadModes(t, testIdleFootprint)
}

func testIdleFootprint(t *testing.T, m readMode) {
	const n = 1000
	ep := newFakeEndpoint()
	ep.echo = true
	ep.frameBuf = 1
	ep.onFrame = func(*fakeSocket, []byte, bool) { deepStack(32) }
	hs := newHarness(t, m, WebSocketConfig{}, ep)
	// Warm up pools, the runtime's starting stack size, and (event mode)
	// the handler's poller and sweeper.
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
			time.Sleep(time.Millisecond)
		}
		runtime.GC()
		runtime.GC()
	}
	g0 := runtime.NumGoroutine()
	settle(g0)
	g0 = runtime.NumGoroutine()
	// Give back what an earlier subtest freed, so that RSS grows by what
	// this one uses, whichever mode runs first.
	debug.FreeOSMemory()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rss0 := rss()

	for range n {
		c := hs.dial(t, "vsn=2.0.0", ws.Dialer{})
		c.send("join")
		c.expectFrame(ws.OpText, "join")
		<-ep.opened
	}
	if m.parked {
		// One parked reader per connection, nothing else: no writer,
		// no burst goroutine left.
		settle(g0 + n)
	} else {
		// Nothing per connection: no reader, no writer.
		settle(g0 + eventModeGoroutineSlack)
	}
	runtime.ReadMemStats(&after)
	rss1 := rss()
	grown := runtime.NumGoroutine() - g0

	stack := float64(int64(after.StackInuse)-int64(before.StackInuse)) / n
	heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / n
	t.Logf("per idle connection: stack %.0f B, heap %.0f B (both ends of the connection, fakes included), RSS %.0f B; goroutines %+d",
		stack, heap, float64(rss1-rss0)/n, grown)
	if m.parked {
		if stack > 4096 {
			t.Errorf(
				"%.0f bytes of stack per idle connection, want at most 4096: the reader keeps the stack that handling a frame grew",
				stack,
			)
		}
	} else {
		if grown > eventModeGoroutineSlack {
			t.Errorf(
				"%d more goroutines with %d idle connections, want at most %d: an idle connection holds a goroutine",
				grown, n, eventModeGoroutineSlack,
			)
		}
		// About 0. What shows is a constant, some hundreds of KiB
		// whatever n (stack spans fragmented by the goroutines that
		// handled the frames, the test goroutine's own stack), spread
		// over the connections; a goroutine per connection would be at
		// least the runtime's smallest stack, 2048 bytes.
		if stack > 512 {
			t.Errorf(
				"%.0f bytes of stack per idle connection, want about 0 (at most 512): a goroutine per connection?",
				stack,
			)
		}
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
