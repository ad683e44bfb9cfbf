package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// Batch limits of the writer. A batch is whatever queued up while the
// previous one was on the wire, so under light load every publish goes
// alone (lowest latency) and under heavy load batches grow to amortize
// the round trip (highest throughput).
const (
	maxBatch      = 512
	maxBatchBytes = 1 << 20
)

// publishReq is one queued PUBLISH, or one run of the history script
// when hist is set. done has room for the one result, so the writer never
// blocks on a caller that gave up.
type publishReq struct {
	channel   string
	sharded   bool // SPUBLISH on a shard channel
	data      []byte
	hist      *historyArgs
	deadline  time.Time
	abandoned atomic.Bool // the caller returned (timeout or ctx): do not send
	after     *fence      // its slot moved writers: wait for the old one (writers.go)
	done      chan error
	// pos is the position the history script gave, written by the writer
	// before it sends on done.
	pos pubsub.Position
}

// size is what the request adds to a batch.
func (r *publishReq) size() int {
	if r.hist != nil {
		return r.hist.size
	}
	return len(r.data)
}

// loop is writer w's goroutine. It sends one pipelined batch at a time
// and waits for its replies before the next: that is what keeps a
// node's messages in publish order, because the pool may hand each
// batch a different connection and only a completed batch is known to
// have been applied by Redis. It returns when the PubSub closes, or once
// its queue is closed (no slot routes to it any more) and drained.
func (ws *writerSet) loop(w *writer) {
	p := ws.p
	defer ws.wg.Done()
	batch := make([]*publishReq, 0, maxBatch)
	var carry *publishReq // held by a fence: the next batch's first
	for {
		r := carry
		carry = nil
		if r == nil {
			var ok bool
			select {
			case <-p.done:
				// Callers still waiting see p.done and return ErrClosed.
				return
			case r, ok = <-w.queue:
				if !ok {
					return
				}
				ws.pending.Add(-1)
			}
		}
		if !ws.await(r) {
			return
		}
		batch = append(batch[:0], r)
		size := r.size()
	fill:
		for len(batch) < maxBatch && size < maxBatchBytes {
			select {
			case r, ok := <-w.queue:
				if !ok {
					break fill
				}
				ws.pending.Add(-1)
				if r.held() {
					carry = r
					break fill
				}
				batch = append(batch, r)
				size += r.size()
			default:
				break fill
			}
		}
		p.flush(batch)
		w.finish(len(batch))
		clear(batch) // let the payloads go
	}
}

// flush sends one batch and hands every request its result.
func (p *PubSub) flush(batch []*publishReq) {
	now := time.Now()
	live := batch[:0]
	var deadline time.Time
	for _, r := range batch {
		// A request whose caller already gave up is not sent: the caller
		// was told the broadcast failed, and a late delivery would only
		// surprise.
		if r.abandoned.Load() || !now.Before(r.deadline) {
			r.done <- ErrTimeout
			continue
		}
		if r.deadline.After(deadline) {
			deadline = r.deadline
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(p.ctx, deadline)
	defer cancel()
	cmds, err := p.client.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
		for _, r := range live {
			if r.hist != nil {
				historyPublish.EvalSha(ctx, pipe, r.hist.keys, r.hist.args...)
			} else if r.sharded {
				_ = pipe.Process(ctx, spublishCmd(ctx, r.channel, r.data))
			} else {
				_ = pipe.Process(ctx, publishCmd(ctx, r.channel, r.data))
			}
		}
		return nil
	})
	again := p.rerunNoScript(ctx, live, cmds)
	moved := p.redirect(ctx, live, cmds)
	errs := make([]error, len(live))
	for i, r := range live {
		e := err
		if i < len(cmds) {
			e = cmds[i].Err()
			if e == nil && r.hist != nil {
				r.pos, e = historyReply(cmds[i])
			}
		}
		if e != nil {
			// The socket deadline can fire a hair before the context's
			// timer: a network timeout is the same event.
			var ne net.Error
			if errors.Is(e, context.DeadlineExceeded) || (errors.As(e, &ne) && ne.Timeout()) {
				e = fmt.Errorf("%w: %w", ErrTimeout, e)
			} else {
				e = fmt.Errorf("redis: publish: %w", e)
			}
		}
		errs[i] = e
	}
	for _, i := range runOrder(len(live), again, moved) {
		if r := live[i]; r.hist != nil && errs[i] == nil {
			// In the order Redis ran them, and before the callers are
			// answered, so that a regression this reveals is counted by
			// the time its Publish returns.
			p.notePublished(r.hist.topic, r.pos, r.hist.opts, now)
		}
	}
	for i, r := range live {
		r.done <- errs[i]
	}
}

// roundTrip queues req for the writer and waits for Redis's answer, for
// at most Options.PublishTimeout (or ctx) from now.
func (p *PubSub) roundTrip(ctx context.Context, topic string, now time.Time, req *publishReq) error {
	if p.lost.Load() {
		return p.publishFailed(topic, p.lostError())
	}
	if err := ctx.Err(); err != nil {
		return p.publishFailed(topic, fmt.Errorf("redis: publish: %w", err))
	}
	deadline := now.Add(p.opt.PublishTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	req.deadline = deadline
	if err := p.writers.enqueue(ctx, req); err != nil {
		if !errors.Is(err, ErrQueueFull) {
			return err
		}
		p.dropped.Add(1)
		if ok, n := p.publishLog.Allow(); ok {
			p.log.Warn("redis: publish queue full; broadcast not relayed to other nodes",
				"topic", topic, "queue", p.opt.QueueSize, "suppressed", n)
		}
		return ErrQueueFull
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var err error
	select {
	case err = <-req.done:
	case <-timer.C:
		req.abandoned.Store(true)
		err = ErrTimeout
	case <-ctx.Done():
		req.abandoned.Store(true)
		err = fmt.Errorf("redis: publish: %w", ctx.Err())
	case <-p.done:
		select {
		case err = <-req.done:
		default:
			return pubsub.ErrClosed
		}
	}
	if err != nil {
		return p.publishFailed(topic, err)
	}
	p.published.Add(1)
	return nil
}

// publishCmd is a PUBLISH that a Redis Cluster client sends to the master
// of its channel's slot, as if the channel were a key. go-redis sends a
// PUBLISH, which has no key, to any master; the cluster bus then relays it
// to the others, and two publishes on one channel sent to two masters can
// reach a subscriber in either order. One master per channel keeps each
// topic's order. A single Redis ignores the key position.
func publishCmd(ctx context.Context, channel string, data []byte) *goredis.IntCmd {
	cmd := goredis.NewIntCmd(ctx, "publish", channel, data)
	cmd.SetFirstKeyPos(1)
	return cmd
}

// spublishCmd is an SPUBLISH, which a Redis Cluster client sends to the
// master of its channel's slot; that shard alone delivers it.
func spublishCmd(ctx context.Context, channel string, data []byte) *goredis.IntCmd {
	cmd := goredis.NewIntCmd(ctx, "spublish", channel, data)
	cmd.SetFirstKeyPos(1)
	return cmd
}
