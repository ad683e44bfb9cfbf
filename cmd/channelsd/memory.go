package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// minReturn is the least free heap worth a forced collection to return.
const minReturn = 8 << 20

// memoryReturner hands the heap a burst freed back to the OS once the
// burst is over.
//
// Why: a join storm or a reconnect wave allocates tens of MiB that are
// garbage a moment later (every join pushes its whole room). The runtime's
// background scavenger returns such pages at about one percent of a CPU,
// so a node that went back to holding idle sockets kept that RSS for
// minutes; a pod's memory limit and its scheduler see RSS, not the heap.
// The check is cheap (runtime/metrics) and forces a collection only when
// at least minReturn is free and the node allocated less than a quarter
// of it since the last check: never in the middle of a burst, at most
// once per quiet period.
type memoryReturner struct {
	samples    []metrics.Sample
	lastAllocs uint64
}

func newMemoryReturner() *memoryReturner {
	r := &memoryReturner{samples: []metrics.Sample{
		{Name: "/memory/classes/heap/free:bytes"}, // free, not yet returned
		{Name: "/gc/heap/allocs:bytes"},           // allocated since start
	}}
	metrics.Read(r.samples)
	r.lastAllocs = r.samples[1].Value.Uint64()
	return r
}

// check returns the free heap to the OS if the node has been quiet since
// the last check, and says how many bytes were free then (0: none
// returned).
func (r *memoryReturner) check() uint64 {
	metrics.Read(r.samples)
	free, allocs := r.samples[0].Value.Uint64(), r.samples[1].Value.Uint64()
	quiet := allocs-r.lastAllocs < free/4
	r.lastAllocs = allocs
	if free < minReturn || !quiet {
		return 0
	}
	debug.FreeOSMemory()
	// FreeOSMemory's own collection allocates nothing worth counting,
	// but read again so the next interval starts from here.
	metrics.Read(r.samples)
	r.lastAllocs = r.samples[1].Value.Uint64()
	return free
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
			log.Debug("channelsd: returned freed heap to the OS after a quiet interval", "bytes", n)
		}
	}
}
