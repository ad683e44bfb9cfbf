package redis

import (
	"context"
	"sync"
	"time"

	"github.com/channelsd/channelsd/presence"
)

// listReads lets the Lists of one topic share their Redis read.
//
// Every join that pushes presence_state lists its room, and a List reads
// the whole room's hash: in a join storm on a room of n users each node
// reads n entries per join, n² over the storm, from a Redis that shares
// the machine with the nodes. Sharing the reads of joins that arrive
// together makes that n times the number of round trips the storm lasts.
//
// Sharing must not weaken what a List promises (presence.Tracker: the
// diffs a subscriber receives, applied on top of a List taken after it
// subscribed, yield the state). So a List never takes the result of a
// read that was already under way when it was called, as a plain
// single-flight would: it waits for the next read, which starts when the
// running one ends and serves every List that arrived meanwhile. A List
// therefore waits at most two round trips, and each topic has at most
// one read in flight.
type listReads struct {
	read    func(ctx context.Context, topic string) ([]row, error)
	timeout time.Duration // bounds each read; a List's own ctx bounds its wait

	mu     sync.Mutex
	closed bool
	topics map[string]*topicReads
	life   context.Context // cancelled by close: reads in flight end at once
	end    context.CancelFunc
	wg     sync.WaitGroup // the goroutines running reads
}

// topicReads is the one read of a topic in flight and the callers
// gathered for the next.
type topicReads struct {
	next *listRead // nil until a caller arrives while a read runs
}

// listRead is one Redis read and its result, shared by the Lists that
// waited for it; rows is never modified once done is closed.
type listRead struct {
	done chan struct{}
	rows []row
	err  error
}

func newListReads(timeout time.Duration, read func(ctx context.Context, topic string) ([]row, error)) *listReads {
	life, end := context.WithCancel(context.Background())
	return &listReads{read: read, timeout: timeout, topics: make(map[string]*topicReads), life: life, end: end}
}

// get returns the other nodes' rows of topic, read from Redis after get
// was called. The rows are shared: callers copy before changing them.
func (r *listReads) get(ctx context.Context, topic string) ([]row, error) {
	lr, err := r.join(topic)
	if err != nil {
		return nil, err
	}
	return lr.wait(ctx)
}

// join returns the read of topic that starts after this call: a new one
// if none is in flight, else the one queued behind it.
func (r *listReads) join(topic string) (*listRead, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, presence.ErrClosed
	}
	if q, running := r.topics[topic]; running {
		if q.next == nil {
			q.next = &listRead{done: make(chan struct{})}
		}
		return q.next, nil
	}
	lr := &listRead{done: make(chan struct{})}
	q := &topicReads{}
	r.topics[topic] = q
	r.wg.Add(1)
	go r.run(topic, q, lr)
	return lr, nil
}

// wait returns lr's result, or ctx's error if ctx ends first; the read
// goes on for the others.
func (lr *listRead) wait(ctx context.Context) ([]row, error) {
	select {
	case <-lr.done:
		return lr.rows, lr.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// run performs lr, then the reads that callers queued meanwhile, one
// after another, and leaves when none is queued.
func (r *listReads) run(topic string, q *topicReads, lr *listRead) {
	defer r.wg.Done()
	for lr != nil {
		ctx, cancel := context.WithTimeout(r.life, r.timeout)
		lr.rows, lr.err = r.read(ctx, topic)
		cancel()
		close(lr.done)
		r.mu.Lock()
		lr, q.next = q.next, nil
		if lr == nil {
			delete(r.topics, topic)
		}
		r.mu.Unlock()
	}
}

// close ends the reads in flight and waits for their goroutines; later
// gets return presence.ErrClosed.
func (r *listReads) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.end()
	r.wg.Wait()
}
