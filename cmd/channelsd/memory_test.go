package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
)

// The returner leaves a burst alone while it allocates, and returns what
// it freed at the first check after it: the free heap then drops at once,
// where the runtime's scavenger would take minutes. (What the other
// tests' goroutines still allocate and free shows as a few MiB: the
// bounds are an eighth of the burst.)
func TestMemoryReturnedAfterABurstOnly(t *testing.T) {
	const residue = 16 << 20
	r := newMemoryReturner()
	burst := make([][]byte, 0, 128)
	for range 128 {
		burst = append(burst, make([]byte, 1<<20))
	}
	runtime.KeepAlive(burst)
	burst = nil
	runtime.GC()
	freeNow := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	if f := freeNow(); f < 4*minReturn {
		t.Fatalf("only %d bytes free after dropping a 128 MiB burst", f)
	}
	if n := r.check(); n != 0 {
		t.Fatalf("returned %d bytes in the check right after a burst of allocation", n)
	}
	if n := r.check(); n < minReturn {
		t.Fatalf("returned %d bytes in the quiet check after the burst, want at least %d", n, minReturn)
	}
	if f := freeNow(); f >= residue {
		t.Fatalf("%d bytes still free after the quiet check", f)
	}
	if n := r.check(); n >= residue {
		t.Fatalf("returned %d bytes again with nothing freed since", n)
	}
}

// Garbage the collector has not run for yet counts too: a quiet node
// whose heap has not reached its goal collects it, then finds nothing
// more to do.
func TestMemoryReturnerCollectsGarbage(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collection but the returner's
	runtime.GC()
	r := newMemoryReturner()
	sink := make([][]byte, 0, 32)
	for range 32 {
		sink = append(sink, make([]byte, 1<<20))
	}
	runtime.KeepAlive(sink)
	sink = nil
	garbage := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64() - min(s[0].Value.Uint64(), s[1].Value.Uint64())
	}
	if g := garbage(); g < 16*minReturn {
		t.Fatalf("only %d bytes of garbage after dropping 32 MiB with the collector off", g)
	}
	if n := r.check(); n != 0 {
		t.Fatalf("collected (%d bytes) in the check right after the allocation", n)
	}
	if n := r.check(); n < 16*minReturn {
		t.Fatalf("the quiet check found %d bytes reclaimable, want at least %d", n, 16*minReturn)
	}
	// Bounds of a few MiB: the other tests' goroutines may still
	// allocate meanwhile.
	if g := garbage(); g >= 4*minReturn {
		t.Fatalf("%d bytes of garbage left after the quiet check", g)
	}
	if n := r.check(); n >= 4*minReturn {
		t.Fatalf("collected again (%d bytes) with nothing allocated since", n)
	}
}

// What a sync.Pool holds after a burst goes too: the check's collections
// empty the pool's victim cache as well as the pool.
func TestMemoryReturnerEmptiesPools(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collection but the returner's
	runtime.GC()
	r := newMemoryReturner()
	var pool sync.Pool
	for range 32 {
		pool.Put(make([]byte, 1<<20))
	}
	objects := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	if o := objects(); o < 16*minReturn {
		t.Fatalf("only %d bytes of heap objects with 32 MiB pooled", o)
	}
	r.check() // the allocation was this interval's
	r.check()
	if o := objects(); o >= 16*minReturn {
		t.Fatalf("%d bytes of heap objects after the quiet check: the pool's items stayed", o)
	}
	runtime.KeepAlive(&pool)
}
