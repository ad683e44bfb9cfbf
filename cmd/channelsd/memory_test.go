package main

import (
	"runtime"
	"runtime/metrics"
	"testing"
)

// The returner leaves a burst alone while it allocates, and returns what
// it freed at the first check after it: the free heap then drops below
// minReturn at once, where the runtime's scavenger would take minutes.
func TestMemoryReturnedAfterABurstOnly(t *testing.T) {
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
	if f := freeNow(); f >= minReturn {
		t.Fatalf("%d bytes still free after the quiet check", f)
	}
	if n := r.check(); n != 0 {
		t.Fatalf("returned %d bytes again with nothing freed since", n)
	}
}
