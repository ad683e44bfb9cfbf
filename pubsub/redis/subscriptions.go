package redis

import (
	"context"
	"errors"
	"iter"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// maxChannelsPerCommand splits a large SUBSCRIBE/UNSUBSCRIBE (a join storm,
// a resync after a reconnect) so that no single command is huge.
const maxChannelsPerCommand = 1000

// markDirty tells the reconciler that topic gained its first or lost its
// last local subscriber.
func (p *PubSub) markDirty(topic string) {
	p.mu.Lock()
	if p.dirty == nil {
		p.dirty = make(map[string]struct{})
	}
	p.dirty[topic] = struct{}{}
	p.mu.Unlock()
	p.poke()
}

// shardRetryMin is the first wait before a failed shard subscription is
// tried again (reconcileLoop).
const shardRetryMin = 100 * time.Millisecond

func (p *PubSub) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// reconcileLoop keeps the node's Redis subscriptions equal to the set of
// topics that have local subscribers.
//
// Why a single goroutine, and why it re-reads the registry: Subscribe and
// Unsubscribe only mark a topic dirty (after changing the registry); the
// reconciler takes the dirty set and then asks the registry whether the
// topic has subscribers *now*. A join and a leave of the same topic
// racing each other can therefore never leave the node unsubscribed with
// a local subscriber, nor subscribed without one: whichever change
// happens after the reconciler read the registry marks the topic dirty
// again, and the next pass looks again. Because only this goroutine sends
// SUBSCRIBE and UNSUBSCRIBE, they cannot be reordered among themselves.
//
// actual mirrors the channel set go-redis keeps for its PubSub (go-redis
// records a channel on Subscribe and forgets it on Unsubscribe even when
// the command fails, and replays that set on every reconnect). So a
// topic unsubscribed during an outage is not resubscribed when Redis
// comes back, and one subscribed during an outage is. The one gap in
// go-redis: a SUBSCRIBE whose write fails triggers a reconnect that
// replays the set *before* the new channels are added. Such topics go to
// retry and are subscribed again on the next tick or reconnect;
// SUBSCRIBE is idempotent in Redis.
func (p *PubSub) reconcileLoop() {
	defer p.workers.Done()
	ticker := time.NewTicker(p.opt.HealthCheckInterval)
	defer ticker.Stop()
	actual := make(map[string]struct{})
	retry := make(map[string]struct{})
	var syncSeq uint64
	// Shard subscriptions that failed (a master just died, a slot just
	// moved) are retried sooner than the tick, from shardRetryMin
	// doubling up to it: after a failover the new master answers within
	// a second or two, and every moment before the retry is lost
	// broadcasts for the topic's subscribers.
	var shardRetry <-chan time.Time
	shardBackoff := shardRetryMin
	for {
		tick, retryShards := false, false
		select {
		case <-p.done:
			return
		case <-p.wake:
		case <-ticker.C:
			tick = true
		case <-shardRetry:
			shardRetry, retryShards = nil, true
		}
		p.mu.Lock()
		dirty := p.dirty
		p.dirty = nil
		resync := p.resync
		p.resync = false
		syncs := p.syncs
		p.syncs = nil
		p.mu.Unlock()

		var sub, unsub []string
		for topic := range dirty {
			want := p.reg.Count(topic) > 0
			_, have := actual[topic]
			switch {
			case want && !have:
				actual[topic] = struct{}{}
				sub = append(sub, topic)
			case !want && have:
				delete(actual, topic)
				delete(retry, topic)
				unsub = append(unsub, topic)
			}
		}
		if tick || resync {
			for topic := range retry {
				sub = append(sub, topic)
			}
		}
		p.subscribed.Store(int64(len(actual)))

		// An UNSUBSCRIBE that fails needs no retry: go-redis has already
		// forgotten the channel, and a failed write means the connection
		// is replaced by one that never had it.
		for chunk := range chunks(unsub) {
			_ = p.command(p.ps.Unsubscribe, chunk)
		}
		if p.shards != nil {
			var ssub, sunsub []string
			for _, t := range sub {
				if p.shardTopic(t) {
					ssub = append(ssub, t)
				}
			}
			for _, t := range unsub {
				if p.shardTopic(t) {
					sunsub = append(sunsub, t)
				}
			}
			p.shards.apply(ssub, sunsub, retryShards, tick)
			switch {
			case len(p.shards.retry) == 0:
				shardRetry, shardBackoff = nil, shardRetryMin
			case shardRetry == nil:
				shardRetry = time.After(shardBackoff)
				shardBackoff = min(2*shardBackoff, p.opt.HealthCheckInterval)
			}
		}
		for chunk := range chunks(sub) {
			if err := p.command(p.ps.Subscribe, chunk); err != nil {
				for _, t := range chunk {
					retry[t] = struct{}{}
				}
				if !p.lost.Load() {
					p.log.Warn("redis: subscribe failed; will retry", "topics", len(chunk), "err", err)
				}
				continue
			}
			for _, t := range chunk {
				delete(retry, t)
			}
		}

		if tick {
			p.sweepTracks()
			ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
			p.writers.sweep(ctx)
			cancel()
		}
		if tick && !p.lost.Load() {
			// Health check: the reply proves the connection alive to the
			// reader, which declares it dead after a long silence. While
			// the connection is lost the reader does the redialing.
			ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
			_ = p.ps.Ping(ctx)
			cancel()
		}

		if len(syncs) > 0 {
			switch {
			case p.lost.Load():
				for _, s := range syncs {
					s <- p.lostError()
				}
			case len(retry) > 0 || (p.shards != nil && len(p.shards.retry) > 0):
				// Not applied yet; wait for the retry on the next tick.
				p.mu.Lock()
				p.syncs = append(syncs, p.syncs...)
				p.mu.Unlock()
			default:
				syncSeq++
				token := "sync:" + strconv.FormatUint(syncSeq, 10)
				// One PING down every connection that carries
				// subscriptions: the barrier holds once all are answered.
				conns := 1
				if p.shards != nil {
					conns += p.shards.ping(token)
				}
				p.mu.Lock()
				p.pongs[token] = syncs
				p.pongLeft[token] = conns
				p.mu.Unlock()
				ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
				err := p.ps.Ping(ctx, token)
				cancel()
				if err != nil {
					p.pongFailed(token, errors.Join(ErrDisconnected, err))
				}
				if p.shards != nil {
					p.shards.sendPings(token)
				}
			}
		}
	}
}

// command runs a go-redis Subscribe or Unsubscribe for topics' channels.
func (p *PubSub) command(fn func(context.Context, ...string) error, topics []string) error {
	chans := make([]string, len(topics))
	for i, t := range topics {
		chans[i] = p.chanPrefix + t
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
	defer cancel()
	return fn(ctx, chans...)
}

// chunks yields s in pieces of at most maxChannelsPerCommand.
func chunks(s []string) iter.Seq[[]string] {
	return func(yield func([]string) bool) {
		for len(s) > 0 {
			n := min(len(s), maxChannelsPerCommand)
			if !yield(s[:n]) {
				return
			}
			s = s[n:]
		}
	}
}

// readLoop receives from the pub/sub connection and dispatches to local
// subscribers. It never blocks on subscribers (Deliver does not block)
// and holds no lock while dispatching.
//
// It also owns the connection state. A read error (Redis gone, the
// connection dropped by Redis for exceeding its output buffer limit, or
// silence) marks the connection lost; go-redis closes it, and the loop
// then redials with backoff by PINGing through go-redis, which dials and
// replays the subscription set before the PING. The first PING that goes
// through ends the outage. Silence: every read carries a deadline of
// three to six health-check intervals, and the reconciler PINGs every
// interval, so a connection that stops answering without being closed
// (a partition, a frozen Redis) fails that read and is replaced.
func (p *PubSub) readLoop() {
	defer p.reader.Done()
	rd := readDeadline{parent: p.ctx, window: 6 * p.opt.HealthCheckInterval}
	defer rd.stop()
	var delay time.Duration
	for {
		if p.lost.Load() {
			pctx, pcancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
			err := p.ps.Ping(pctx)
			pcancel()
			if p.ctx.Err() != nil {
				return
			}
			if err != nil {
				delay = backoff(delay)
				if !p.sleep(delay) {
					return
				}
				continue
			}
			delay = 0
			p.markReconnected()
		}
		msg, err := p.ps.Receive(rd.context())
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, goredis.ErrClosed) {
				return
			}
			var rerr goredis.Error
			if errors.As(err, &rerr) {
				// An error reply (say, an ACL refusing a channel) leaves
				// the connection usable.
				p.log.Warn("redis: pub/sub command refused", "err", err)
				continue
			}
			p.markLost(err)
			continue
		}
		switch msg := msg.(type) {
		case *goredis.Message:
			p.handle(msg.Channel, msg.Payload, false)
		case *goredis.Pong:
			p.pong(msg.Payload)
		}
		// *goredis.Subscription: confirmations carry nothing we need.
	}
}

// handle decodes one envelope, received on channel (a shard channel
// when sharded), and dispatches it.
func (p *PubSub) handle(channel, data string, sharded bool) {
	msg := goredis.Message{Channel: channel, Payload: data}
	topic, ok := strings.CutPrefix(msg.Channel, p.chanPrefix)
	if ok && sharded {
		// A classic topic may itself be "{x}": only the connection tells
		// the two names apart.
		var inner bool
		topic, inner = strings.CutPrefix(topic, "{")
		topic, ok = strings.CutSuffix(topic, "}")
		ok = ok && inner
	}
	if !ok {
		p.decodeFailed(msg.Channel, errors.New("redis: message on a channel outside the prefix"))
		return
	}
	if len(msg.Channel)+len(msg.Payload) > p.opt.MaxMessageSize {
		p.decodeFailed(msg.Channel, errEnvelopeTooLarge)
		return
	}
	env, err := decodeEnvelope(msg.Payload)
	if err != nil {
		p.decodeFailed(msg.Channel, err)
		return
	}
	// Our own broadcast, echoed by Redis, was delivered locally already,
	// except on a topic with history: then the echo is the delivery, so
	// that this node sees the topic's offsets in Redis's order.
	own := env.origin == p.opt.NodeID
	if own {
		if _, history := p.historyOptions(topic); !history {
			return
		}
	}
	// Another node (or anything that can PUBLISH to this Redis) may send
	// what the client entry points refuse; one text frame that is not
	// UTF-8 closes every WebSocket subscriber it reaches.
	payload := []byte(env.payload)
	if err := env.deliverable(topic, payload); err != nil {
		p.decodeFailed(msg.Channel, err)
		return
	}
	m := &pubsub.Message{
		Topic:   topic,
		Event:   env.event,
		Payload: payload,
		Binary:  env.binary,
		Pos:     env.pos,
	}
	if !m.Pos.IsZero() {
		m.Pos = p.track(topic, &env)
	}
	if own {
		// broadcast_from excludes the sender on its origin node only:
		// subscriber ids are only unique per node.
		m.From = env.from
		p.reg.Dispatch(m)
		return
	}
	p.received.Add(1)
	if env.sent != 0 {
		if observe := p.crossNode.Load(); observe != nil {
			// Clock skew between nodes can make this negative: clamp.
			(*observe)(max(0, time.Duration(time.Now().UnixNano()-env.sent)))
		}
	}
	p.reg.Dispatch(m)
}

func (p *PubSub) decodeFailed(channel string, err error) {
	p.decodeErrors.Add(1)
	if ok, n := p.decodeLog.Allow(); ok {
		p.log.Warn("redis: dropping undecodable message", "channel", channel, "err", err, "suppressed", n)
	}
}

// pong records one connection's answer to the PING that carried token,
// and completes the Sync calls waiting for it once every connection it
// went down has answered.
func (p *PubSub) pong(token string) {
	p.mu.Lock()
	ws, ok := p.pongs[token]
	if ok {
		if p.pongLeft[token]--; p.pongLeft[token] > 0 {
			p.mu.Unlock()
			return
		}
	}
	delete(p.pongs, token)
	delete(p.pongLeft, token)
	p.mu.Unlock()
	for _, w := range ws {
		w <- nil
	}
}

// pongFailed fails the Sync calls waiting for token: a connection it
// went down will not answer.
func (p *PubSub) pongFailed(token string, err error) {
	p.mu.Lock()
	ws := p.pongs[token]
	delete(p.pongs, token)
	delete(p.pongLeft, token)
	p.mu.Unlock()
	for _, w := range ws {
		w <- err
	}
}

func (p *PubSub) markLost(err error) {
	if !p.lost.CompareAndSwap(false, true) {
		return
	}
	p.lostAt.Store(time.Now().UnixNano())
	p.reg.ForgetTops() // broadcasts may be missed from here on (tops.go)
	p.log.Warn("redis: connection lost", "err", err)
	// A PING in flight on the dead connection will never be answered.
	p.mu.Lock()
	pending := p.pongs
	p.pongs = make(map[string][]chan error)
	clear(p.pongLeft)
	p.mu.Unlock()
	for _, ws := range pending {
		for _, w := range ws {
			w <- ErrDisconnected
		}
	}
}

func (p *PubSub) markReconnected() {
	d := time.Since(time.Unix(0, p.lostAt.Load()))
	p.reconnects.Add(1)
	// Notes taken while the loss went unnoticed may stand before
	// broadcasts that never reached this node (tops.go).
	p.reg.ForgetTops()
	p.lost.Store(false)
	p.log.Info("redis: reconnected after "+d.Round(time.Millisecond).String(),
		"downtime", d, "subscriptions", p.subscribed.Load())
	p.mu.Lock()
	p.resync = true
	p.mu.Unlock()
	p.poke()
}

// readDeadline hands out contexts whose deadline is between half a
// window and a window away. go-redis turns a context deadline into the
// read deadline and treats hitting it as a dead connection (a plain read
// timeout would not be). One context per half window rather than per
// read keeps the hot path free of timer allocations.
type readDeadline struct {
	parent  context.Context
	window  time.Duration
	ctx     context.Context
	cancel  context.CancelFunc
	renewAt time.Time
}

func (r *readDeadline) context() context.Context {
	if now := time.Now(); r.ctx == nil || now.After(r.renewAt) {
		r.stop()
		r.ctx, r.cancel = context.WithTimeout(r.parent, r.window)
		r.renewAt = now.Add(r.window / 2)
	}
	return r.ctx
}

func (r *readDeadline) stop() {
	if r.cancel != nil {
		r.cancel()
	}
}

// sleep waits d, or returns false if the PubSub is closed meanwhile.
func (p *PubSub) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.done:
		return false
	}
}

// backoff returns the next redial delay: doubling from 50ms to 2s, with
// jitter so that a cluster's nodes do not redial in lockstep.
func backoff(prev time.Duration) time.Duration {
	const lo, hi = 50 * time.Millisecond, 2 * time.Second
	d := min(max(prev*2, lo), hi)
	return d/2 + rand.N(d/2+1)
}
