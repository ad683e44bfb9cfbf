//go:build !race

// The race detector changes heap layout; this test measures the real
// thing (make test-norace).

package channels

import (
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestJoinRefFootprint joins topics with long join_refs and measures what
// the joins keep. The decoded header (refs, topic and event in one string)
// must not outlive the frame: a subscription kept the topic, a substring
// of it, and so the whole header, ref included (issue: 429 MiB of refs
// uploaded over 5 sockets pinned 861 MiB). MaxRefLength refuses such refs
// by default; the test turns it off to check that nothing is retained
// even so.
func TestJoinRefFootprint(t *testing.T) {
	const (
		joins  = 32
		refLen = 256 << 10
	)
	e := newTestEnv(t, EndpointConfig{MaxRefLength: -1})
	s, c := e.open(t, V2)
	before := liveHeap()
	for i := range joins {
		f := []byte(`["` + strings.Repeat("7", refLen) + `","1","room:` + strconv.Itoa(i) + `","phx_join",{}]`)
		s.handleFrame(f, false)
		// The join reply echoes the ref; a transport sends it and lets
		// it go, as it does the frame.
		c.take()
	}
	after := liveHeap()
	if n := e.ep.Stats().Channels.Load(); n != joins {
		t.Fatalf("%d channels joined, want %d", n, joins)
	}
	grown := int64(after) - int64(before)
	t.Logf("%d joins with %d KiB join_refs: live heap grew %d KiB", joins, refLen>>10, grown>>10)
	// Each join keeps its own copy of the join_ref (it is echoed in
	// phx_close and compared on every message); nothing more than that
	// and a little bookkeeping.
	if limit := int64(joins*refLen + 1<<20); grown > limit {
		t.Errorf("live heap grew %d KiB, want at most %d KiB: joins keep their frames' headers", grown>>10, limit>>10)
	}
	runtime.KeepAlive(s)
}
