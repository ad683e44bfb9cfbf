package redis

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/channelsd/channelsd/pubsub"
)

// Writers. On a single Redis (or Sentinel) one writer sends every
// publish. On a Redis Cluster there is one writer per master: a request
// goes to the writer of the master that owns its key's slot (the
// channel's, or the history keys' hash tag), as go-redis's slot map has
// it when the request is queued. A writer waits for its batch's replies
// before the next one, and a cluster pipeline completes only when every
// master in it answered; with one writer a master that stops answering
// (killed, before its replica takes over) held every topic's publishes
// for up to PublishTimeout, with one per master it holds only its own
// slots'.
//
// Order across a move. A slot's requests keep their order inside one
// writer. When the slot map moves a slot to another master (a failover,
// a migration), its next request goes to another writer, which must not
// send it before the old writer has answered every request it had
// queued when the slot moved: the request carries a fence (the old
// writer and its count of queued requests then), and the new writer
// waits for the fence before sending it. The wait is bounded by the old
// writer's deadlines (each of its batches ends by PublishTimeout). A
// request held by a fence only ever starts a batch, behind requests that
// are all answered: two writers then never wait for each other, since
// each would have to hold a request queued before the other's move and
// one queued after it.

// writer is one queue and the goroutine that drains it.
type writer struct {
	addr  string // the master's address; "" on a single Redis
	queue chan *publishReq
	// enqueued counts the requests ever queued here, completed those
	// answered, in queue order: a fence passes when completed reaches
	// the enqueued of its move.
	enqueued  atomic.Uint64 // incremented under writerSet.mu
	completed atomic.Uint64
	slots     int // guarded by writerSet.mu: routes that lead here

	mu       sync.Mutex
	progress chan struct{} // guarded by mu: closed after the next batch; nil if nobody waits
}

// fence holds a moved slot's requests until w has answered the first
// mark requests queued on it.
type fence struct {
	w    *writer
	mark uint64
}

func (f *fence) passed() bool { return f.w.completed.Load() >= f.mark }

// slotRoute is where a slot's requests go, and the fence the next ones
// wait for after a move.
type slotRoute struct {
	w     *writer
	key   string // a key of the slot, to look its master up again
	after *fence
}

// writerSet routes requests to writers and bounds what they queue, all
// writers together, by Options.QueueSize.
type writerSet struct {
	p *PubSub
	// slots routes requests to the master of their slot; nil: one
	// writer. A request whose slot map cannot be had (the cluster
	// unreachable) goes to the writer "", whose pipeline fails as any
	// would.
	slots *slotMap
	wg    sync.WaitGroup

	pending atomic.Int64 // queued, not yet taken by a writer; raised under mu

	mu     sync.Mutex
	closed bool               // guarded by mu: no writer starts any more
	one    *writer            // guarded by mu: the writer on a single Redis
	byAddr map[string]*writer // guarded by mu: a cluster's writers
	routes []slotRoute        // guarded by mu: per slot; nil on a single Redis
}

func newWriterSet(p *PubSub, slots *slotMap) *writerSet {
	ws := &writerSet{p: p, slots: slots}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if slots == nil {
		ws.one = ws.startLocked("")
	} else {
		ws.byAddr = make(map[string]*writer)
		ws.routes = make([]slotRoute, clusterSlots)
	}
	return ws
}

// startLocked starts a writer for the master at addr.
func (ws *writerSet) startLocked(addr string) *writer {
	w := &writer{addr: addr, queue: make(chan *publishReq, ws.p.opt.QueueSize)}
	if ws.byAddr != nil {
		ws.byAddr[addr] = w
	}
	ws.wg.Add(1)
	go ws.loop(w)
	return w
}

// enqueue queues req on its writer: nil, ErrQueueFull, or
// pubsub.ErrClosed after stop.
func (ws *writerSet) enqueue(ctx context.Context, req *publishReq) error {
	slot, key, addr := 0, "", ""
	if ws.slots != nil {
		key = req.channel
		if req.hist != nil {
			key = req.hist.keys[0]
		}
		slot, addr = keySlot(key), ws.slots.master(ctx, key)
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		return pubsub.ErrClosed
	}
	if ws.pending.Load() >= int64(ws.p.opt.QueueSize) {
		return ErrQueueFull
	}
	w := ws.routeLocked(slot, key, addr, req)
	select {
	case w.queue <- req:
	default:
		// Not reached: no queue holds more than the set's bound.
		return ErrQueueFull
	}
	ws.pending.Add(1)
	w.enqueued.Add(1)
	return nil
}

// routeLocked returns the writer for slot (of key), now at the master addr,
// moving the slot there (with a fence on its old writer) when its
// master changed, and sets req's fence.
func (ws *writerSet) routeLocked(slot int, key, addr string, req *publishReq) *writer {
	if ws.routes == nil {
		return ws.one
	}
	r := &ws.routes[slot]
	if r.after != nil && r.after.passed() {
		r.after = nil
	}
	if r.w == nil || r.w.addr != addr {
		w := ws.byAddr[addr]
		if w == nil {
			w = ws.startLocked(addr)
		}
		if old := r.w; old != nil {
			if f := (&fence{old, old.enqueued.Load()}); !f.passed() {
				r.after = f
			}
			ws.releaseLocked(old)
		}
		r.w, r.key = w, key
		w.slots++
	}
	req.after = r.after
	return r.w
}

// releaseLocked drops one route to w, and stops w when none is left:
// it answers what it has queued, then returns.
func (ws *writerSet) releaseLocked(w *writer) {
	if w.slots--; w.slots == 0 {
		delete(ws.byAddr, w.addr)
		close(w.queue)
	}
}

// sweep moves off their writer the routed slots whose master changed in
// the slot map (a failover, a migration) without a publish since, so
// that a writer whose master is gone stops; the slots' next requests
// still wait for what it had queued. It reads the cluster client's map
// as it is, without asking Redis.
func (ws *writerSet) sweep(ctx context.Context) {
	if ws.slots == nil {
		return
	}
	type routed struct {
		slot int
		key  string
		w    *writer
	}
	var check []routed
	ws.mu.Lock()
	for i, r := range ws.routes {
		if r.w != nil {
			check = append(check, routed{i, r.key, r.w})
		}
	}
	ws.mu.Unlock()
	var gone []routed
	for _, c := range check {
		if addr := ws.slots.master(ctx, c.key); addr != c.w.addr {
			gone = append(gone, c)
		}
	}
	if len(gone) == 0 {
		return
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, g := range gone {
		r := &ws.routes[g.slot]
		if r.w != g.w {
			continue // a publish moved it meanwhile
		}
		if f := (&fence{r.w, r.w.enqueued.Load()}); !f.passed() {
			r.after = f
		}
		ws.releaseLocked(r.w)
		r.w = nil
	}
}

// count returns how many writers run.
func (ws *writerSet) count() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.one != nil {
		return 1
	}
	return len(ws.byAddr)
}

// queues returns how many requests wait in each writer's queue, by its
// master's address ("" for the writer of a single Redis).
func (ws *writerSet) queues() map[string]int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.one != nil {
		return map[string]int{"": len(ws.one.queue)}
	}
	q := make(map[string]int, len(ws.byAddr))
	for addr, w := range ws.byAddr {
		q[addr] = len(w.queue)
	}
	return q
}

// stop keeps writers from starting, and waits for the running ones to
// return (after PubSub.done is closed).
func (ws *writerSet) stop() {
	ws.mu.Lock()
	ws.closed = true
	ws.mu.Unlock()
	ws.wg.Wait()
}

// finish records that the writer answered n more requests, and wakes
// the fences waiting on it.
func (w *writer) finish(n int) {
	w.completed.Add(uint64(n))
	w.mu.Lock()
	if w.progress != nil {
		close(w.progress)
		w.progress = nil
	}
	w.mu.Unlock()
}

// next returns a channel closed when the writer next finishes a batch.
func (w *writer) next() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.progress == nil {
		w.progress = make(chan struct{})
	}
	return w.progress
}

// await waits until r's fence has passed, or the PubSub closes (false).
func (ws *writerSet) await(r *publishReq) bool {
	f := r.after
	r.after = nil
	for f != nil && !f.passed() {
		ch := f.w.next()
		if f.passed() {
			break
		}
		select {
		case <-ch:
		case <-ws.p.done:
			return false
		}
	}
	return true
}

// held reports whether r must wait for a fence.
func (r *publishReq) held() bool { return r.after != nil && !r.after.passed() }
