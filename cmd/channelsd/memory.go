package main

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// minReturn is the least reclaimable heap (free, or garbage not yet
// collected) worth a forced collection to return: a collection of a
// node's heap (tens of MiB at 15,000 idle sockets) costs milliseconds of
// CPU, and 1 MiB is ~70 bytes per socket there.
const minReturn = 1 << 20

// memoryReturner hands the heap a burst freed back to the OS once the
// burst is over.
//
// Why: a join storm or a reconnect wave allocates tens of MiB that are
// garbage a moment later (every join pushes its whole room). The runtime's
// background scavenger returns such pages at about one percent of a CPU,
// so a node that went back to holding idle sockets kept that RSS for
// minutes; a pod's memory limit and its scheduler see RSS, not the heap.
//
// Garbage counts as well as free heap: what a burst left to collect is
// resident until the collector runs, and the collector runs when the heap
// reaches its goal (GOGC), which a node that went quiet after a storm
// reaches late or never; a burst's garbage was up to 300 bytes per idle
// socket at the reading of BENCHMARKS.md's idle figure. So this is a
// policy of the node's for its quiet periods: a collection more than the
// pacer would make, once the allocation stops.
//
// The check is cheap (runtime/metrics) and forces a collection only when
// at least minReturn is reclaimable and the node allocated less than a
// quarter of that since the last check: never in the middle of a burst,
// at most once per quiet period. A node that allocates steadily but
// little (heartbeats, scrapes) is collected each time its garbage
// reaches four intervals' allocation.
type memoryReturner struct {
	samples    []metrics.Sample
	lastAllocs uint64
}

// The samples memoryReturner reads, in order.
const (
	sampleFree    = iota // heap free, not yet returned
	sampleObjects        // heap objects: live and garbage not yet collected
	sampleLive           // heap live at the last collection
	sampleAllocs         // allocated since start
)

func newMemoryReturner() *memoryReturner {
	r := &memoryReturner{samples: []metrics.Sample{
		sampleFree:    {Name: "/memory/classes/heap/free:bytes"},
		sampleObjects: {Name: "/memory/classes/heap/objects:bytes"},
		sampleLive:    {Name: "/gc/heap/live:bytes"},
		sampleAllocs:  {Name: "/gc/heap/allocs:bytes"},
	}}
	metrics.Read(r.samples)
	r.lastAllocs = r.samples[sampleAllocs].Value.Uint64()
	return r
}

// check collects and returns the reclaimable heap to the OS if the node
// has been quiet since the last check, and says how many bytes were
// reclaimable then (0: nothing done).
func (r *memoryReturner) check() uint64 {
	metrics.Read(r.samples)
	free, allocs := r.samples[sampleFree].Value.Uint64(), r.samples[sampleAllocs].Value.Uint64()
	objects, live := r.samples[sampleObjects].Value.Uint64(), r.samples[sampleLive].Value.Uint64()
	reclaimable := free
	if objects > live {
		reclaimable += objects - live
	}
	quiet := allocs-r.lastAllocs < reclaimable/4
	r.lastAllocs = allocs
	if reclaimable < minReturn || !quiet {
		return 0
	}
	// Two collections: the first moves what the sync.Pools hold (the
	// burst's read and write buffers, 4 and 8 KiB each) to their victim
	// caches, which the second drops; one would leave them resident
	// until the next collection, which a quiet node may not make for
	// minutes (some 100 bytes per idle socket after a join storm).
	runtime.GC()
	debug.FreeOSMemory()
	// FreeOSMemory's own collection allocates nothing worth counting,
	// but read again so the next interval starts from here.
	metrics.Read(r.samples)
	r.lastAllocs = r.samples[sampleAllocs].Value.Uint64()
	return reclaimable
}

// run checks every interval until ctx ends.
func (r *memoryReturner) run(ctx context.Context, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := r.check(); n > 0 {
			log.Debug("channelsd: collected and returned the heap a burst left, after a quiet interval", "bytes", n)
		}
	}
}
