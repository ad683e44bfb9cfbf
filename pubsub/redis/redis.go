package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// Errors returned by Publish and Ping, besides pubsub.ErrClosed. Local
// subscribers got the message whatever the error; other nodes may have
// missed it.
var (
	// ErrQueueFull: the publish queue was full, the message was not sent
	// to Redis (counted in Stats.Dropped).
	ErrQueueFull = errors.New("redis: publish queue full")
	// ErrTimeout: Redis did not acknowledge the PUBLISH within
	// Options.PublishTimeout.
	ErrTimeout = errors.New("redis: publish timed out")
	// ErrDisconnected: the node's connection to Redis is down; it is
	// being redialed.
	ErrDisconnected = errors.New("redis: not connected")
	// ErrNotCluster: New was given a Redis Cluster URL, and the Redis it
	// reached runs without cluster support. Retrying cannot help.
	ErrNotCluster = errors.New("redis: not a Redis Cluster")
	// ErrRedisTooOld: New was given a Redis Cluster URL, and a master of
	// that cluster runs a Redis older than 7, without sharded pub/sub.
	ErrRedisTooOld = errors.New("redis: Redis too old")
)

// PubSub is a pubsub.PubSub that relays broadcasts between nodes through
// Redis pub/sub. It delivers to this node's subscribers itself (through a
// pubsub.Registry), and PUBLISHes one envelope per broadcast on the
// Redis channel "<prefix>:t:<topic>"; it is SUBSCRIBEd to that channel
// exactly while the topic has local subscribers.
//
// Three kinds of goroutine do the Redis work; none is started per call:
//   - the reconciler owns the subscription set: it compares the topics
//     that have local subscribers with the channels it has subscribed and
//     sends SUBSCRIBE/UNSUBSCRIBE (batched) to close the gap, and PINGs
//     the pub/sub connection every HealthCheckInterval;
//   - the reader receives from the pub/sub connection, decodes envelopes
//     and dispatches them to local subscribers, and owns the connection
//     state (lost, reconnected);
//   - the writer drains the bounded publish queue in pipelined batches
//     (on a Redis Cluster, one writer and queue per master).
//
// It is a pubsub.History too: a topic the history policy
// gives history is published by a Redis script that also numbers and
// retains the broadcast, and is delivered to every node's subscribers,
// this node's included, from Redis, after Publish returns.
type PubSub struct {
	opt        Options
	log        *slog.Logger
	client     goredis.UniversalClient
	ps         *goredis.PubSub
	shards     *shardSet // sharded subscriptions; nil unless on a Redis Cluster
	slots      *slotMap  // nil unless on a Redis Cluster
	reg        pubsub.Registry
	chanPrefix string // "<prefix>:t:"

	// ctx is canceled by Close, aborting in-flight dials and commands.
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	closed  atomic.Bool
	workers sync.WaitGroup // reconciler
	reader  sync.WaitGroup

	// mu guards the reconciler's inbox. It is never held across a Redis
	// command or a Dispatch.
	mu     sync.Mutex
	dirty  map[string]struct{} // topics whose first/last subscriber changed
	resync bool                // connection re-established: retry failed SUBSCRIBEs now
	syncs  []chan error        // Sync callers waiting for the next barrier
	pongs  map[string][]chan error
	// pongLeft counts, per Sync token, the connections (the classic one
	// and each shard connection) whose PONG has not come back yet.
	pongLeft map[string]int
	wake     chan struct{} // cap 1: the inbox changed

	// Connection state, written by the reader.
	// confirming counts, per topic, first subscriptions whose SUBSCRIBE
	// is not yet confirmed; later joiners of such a topic wait too.
	confirmMu  sync.Mutex
	confirming map[string]int

	lost   atomic.Bool
	lostAt atomic.Int64 // unix nanoseconds

	writers *writerSet
	seq     atomic.Uint64 // message ids

	subscribed    atomic.Int64 // channels the reconciler holds
	published     atomic.Uint64
	publishErrors atomic.Uint64
	dropped       atomic.Uint64
	received      atomic.Uint64
	decodeErrors  atomic.Uint64
	reconnects    atomic.Uint64
	tooLarge      atomic.Uint64 // messages refused above MaxMessageSize
	redirected    atomic.Uint64 // publishes sent again after MOVED or ASK

	publishLog, decodeLog pubsub.RateLog

	crossNode atomic.Pointer[func(time.Duration)] // ObserveCrossNode

	calls calls // node-to-node calls, call.go

	gate atomic.Pointer[Gate] // SetGate; nil: every form at the floor
	// The Gate's answers the message paths ask for every message, kept
	// while it says yes (gate.go): sharded pub/sub (FormShard 2) and
	// positions on the wire (FormEnvelope 3).
	mayShard, mayPos gateAnswer

	hist    historyState  // history.go
	regress historyTracks // regress.go
}

// SetGate gives the PubSub the Gate its writers consult; the
// node that reads the cluster reports feeds it. Without one, everything
// is written in the floor's form.
func (p *PubSub) SetGate(g *Gate) { p.gate.Store(g) }

// Gate returns the Gate set by SetGate, or nil (whose answers are the
// floor's).
func (p *PubSub) Gate() *Gate { return p.gate.Load() }

var _ pubsub.PubSub = (*PubSub)(nil)

// New connects to Redis and starts the node's PubSub. ctx bounds the
// initial connection check only: New fails if Redis cannot be reached
// now (so a wrong address shows at startup), while a Redis that goes away
// later is redialed for as long as the PubSub lives.
func New(ctx context.Context, opt Options) (*PubSub, error) {
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, err
	}
	client, err := opt.newClient()
	if err != nil {
		return nil, err
	}
	// The slot map before the first command: it keeps the node clients
	// go-redis makes (slotmap.go).
	cc, _ := client.(*goredis.ClusterClient)
	var slots *slotMap
	if cc != nil {
		slots = newSlotMap(cc)
	}
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		// A cluster client asks for the slot map first, which a Redis
		// without cluster support refuses with this message.
		if opt.Cluster() && strings.Contains(err.Error(), "cluster support disabled") {
			return nil, fmt.Errorf("%w: %s answered %q; name one Redis with a redis:// URL", ErrNotCluster, opt.describe(), err)
		}
		return nil, fmt.Errorf("redis: connecting to %s: %w", opt.describe(), err)
	}
	if cc != nil {
		if err := checkShardedPubSub(ctx, cc); err != nil {
			_ = client.Close()
			return nil, err
		}
	}
	p := &PubSub{
		opt:        opt,
		log:        opt.Logger,
		client:     client,
		chanPrefix: opt.Prefix + ":t:",
		slots:      slots,
		mayShard:   gateAnswer{form: FormShard, level: 2},
		mayPos:     gateAnswer{form: FormEnvelope, level: 3},
		done:       make(chan struct{}),
		pongs:      make(map[string][]chan error),
		pongLeft:   make(map[string]int),
		wake:       make(chan struct{}, 1),
	}
	p.calls.sem = make(chan struct{}, opt.MaxCalls)
	if cc != nil {
		p.shards = newShardSet(p, cc.Options())
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.ps = client.Subscribe(p.ctx)
	// Dial the pub/sub connection now rather than on the first
	// subscription, so that New fails if Redis refuses it. go-redis
	// replays the pattern on every reconnect, as it does channels.
	err = p.ps.Ping(ctx)
	if err == nil && opt.PatternTopics != "" {
		err = p.ps.PSubscribe(ctx, globEscape(p.chanPrefix+opt.PatternTopics)+"*")
	}
	if err != nil {
		p.cancel()
		_ = p.ps.Close()
		_ = client.Close()
		return nil, fmt.Errorf("redis: pub/sub connection to %s: %w", opt.describe(), err)
	}
	p.writers = newWriterSet(p, slots)
	p.workers.Add(1)
	go p.reconcileLoop()
	p.reader.Add(1)
	go p.readLoop()
	return p, nil
}

// describe names the Redis for messages, without credentials.
func (o Options) describe() string {
	if o.Cluster() {
		if co, err := parseClusterURL(o.URL); err == nil {
			return "the Redis Cluster at " + strings.Join(co.Addrs, ",")
		}
		return "the configured Redis Cluster"
	}
	if o.URL != "" {
		if u, err := url.Parse(o.URL); err == nil {
			return u.Redacted()
		}
		return "the configured URL"
	}
	return fmt.Sprintf("master %q via sentinels %s", o.MasterName, strings.Join(o.SentinelAddrs, ","))
}

// NodeID returns the id this node stamps on its envelopes.
func (p *PubSub) NodeID() string { return p.opt.NodeID }

// Reconnects counts recoveries of the pub/sub connection. Each one may
// have cost this node messages published meanwhile (at-most-once), which
// presence repairs for its clients.
func (p *PubSub) Reconnects() uint64 { return p.reconnects.Load() }

// DispatchLocal delivers m to this node's subscribers only, without
// relaying it to Redis: for messages that every node derives on its own,
// such as a presence_state refresh after the node may have missed diffs.
func (p *PubSub) DispatchLocal(m *pubsub.Message) { p.reg.Dispatch(m) }

// Subscribe implements pubsub.PubSub. The first local subscriber of a
// topic makes the node SUBSCRIBE to the topic's Redis channel; Subscribe
// does not wait for that (a socket's join must not wait on Redis), so
// broadcasts from other nodes may be missed until Redis has applied it.
// The subscription is never lost: the reconciler retries it, including
// across reconnects, for as long as the topic has local subscribers. Sync
// waits for it.
//
// While the node's SUBSCRIBE for the topic is not yet confirmed by Redis
// (this is the topic's first local subscriber, or the first one's is still
// in flight), Subscribe waits for it, for at most Options.SubscribeTimeout:
// a client whose join was acknowledged must receive every broadcast
// published after that, from any node. While Redis is unreachable it does
// not wait; the subscription is made when Redis is back (at-most-once).
func (p *PubSub) Subscribe(topic string, s pubsub.Subscriber) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	if p.patternTopic(topic) {
		p.reg.Add(topic, s)
		return nil
	}
	first := p.reg.Add(topic, s)
	if first {
		p.markDirty(topic)
	}
	p.confirmMu.Lock()
	if first {
		if p.confirming == nil {
			p.confirming = make(map[string]int)
		}
		p.confirming[topic]++
	}
	wait := p.confirming[topic] > 0
	p.confirmMu.Unlock()
	if wait && !p.lost.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), p.opt.SubscribeTimeout)
		if err := p.Sync(ctx); err != nil {
			p.log.Debug("redis: subscription not confirmed in time; the join proceeds", "topic", topic, "err", err)
		}
		cancel()
	}
	if first {
		p.confirmMu.Lock()
		if p.confirming[topic]--; p.confirming[topic] <= 0 {
			delete(p.confirming, topic)
		}
		p.confirmMu.Unlock()
	}
	return nil
}

// Unsubscribe implements pubsub.PubSub. After the last local subscriber
// of a topic leaves, the node UNSUBSCRIBEs from its Redis channel.
func (p *PubSub) Unsubscribe(topic string, s pubsub.Subscriber) {
	if p.reg.Remove(topic, s) && !p.patternTopic(topic) {
		p.markDirty(topic)
	}
}

// SubscribePrefix implements pubsub.PrefixSubscriber for the prefixes
// that the pattern subscription receives (Options.PatternTopics); others
// fail with errPrefixNotPattern.
func (p *PubSub) SubscribePrefix(prefix string, s pubsub.Subscriber) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	if !p.patternTopic(prefix) {
		return errPrefixNotPattern
	}
	p.reg.AddPrefix(prefix, s)
	return nil
}

// UnsubscribePrefix implements pubsub.PrefixSubscriber.
func (p *PubSub) UnsubscribePrefix(prefix string, s pubsub.Subscriber) { p.reg.RemovePrefix(prefix, s) }

var _ pubsub.PrefixSubscriber = (*PubSub)(nil)

// errPrefixNotPattern refuses a prefix route that no subscription to
// Redis would feed.
var errPrefixNotPattern = errors.New("pubsub/redis: a prefix route needs a prefix within Options.PatternTopics")

// patternTopic reports whether topic comes through the pattern
// subscription (Options.PatternTopics).
func (p *PubSub) patternTopic(topic string) bool {
	return p.opt.PatternTopics != "" && strings.HasPrefix(topic, p.opt.PatternTopics)
}

// globEscape escapes the characters that Redis glob patterns give a
// meaning to, so a prefix matches only itself.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ObserveDispatch implements pubsub.DispatchObservable: f is told how long
// each dispatch to this node's subscribers took, for broadcasts published
// here and those received from other nodes alike.
func (p *PubSub) ObserveDispatch(f func(time.Duration)) { p.reg.SetDispatchObserver(f) }

var _ pubsub.DispatchObservable = (*PubSub)(nil)

// ObserveCrossNode sets f to be told, for every broadcast received from
// another node, the time from its Publish on the origin node (the send
// time the origin stamps in the envelope) to its dispatch here. It runs on
// the reader goroutine and must be cheap (a histogram's Observe). The two
// times come from two clocks: skew between the nodes shifts the value,
// and a negative difference (this clock behind the origin's) is reported
// as 0. Envelopes without a send time (version 1) are not reported. nil
// removes the observer.
func (p *PubSub) ObserveCrossNode(f func(time.Duration)) {
	if f == nil {
		p.crossNode.Store(nil)
		return
	}
	p.crossNode.Store(&f)
}

// Subscribers returns the number of local subscribers of topic.
func (p *PubSub) Subscribers(topic string) int { return p.reg.Count(topic) }

// Publish implements pubsub.PubSub. It delivers m to local subscribers,
// then queues the envelope for the writer and waits until Redis has
// acknowledged the PUBLISH, for at most Options.PublishTimeout (or ctx).
//
// Order: the writer is one goroutine that sends its batches one at a
// time and waits for each batch's replies before sending the next, so
// envelopes reach Redis in queue order whichever pooled connection
// carries them, and Redis delivers them to every subscriber in that
// order. Publishes made one after another (as one channel or one socket
// makes them) are therefore seen in order on every node; concurrent
// publishes have no order among themselves, as with pubsub/local.
//
// While the connection to Redis is down Publish fails at once with
// ErrDisconnected instead of waiting out the timeout, so a socket that
// broadcasts is not stalled by an outage.
//
// A message above Options.MaxMessageSize is refused with
// pubsub.ErrTooLarge before any delivery, local subscribers included.
//
// A topic with history (SetHistoryPolicy) differs: Publish delivers
// nothing itself. The writer runs the history script in its batch, in queue order with the PUBLISHes, and Publish waits for
// the script's answer as it waits for a PUBLISH's (same timeout,
// ErrDisconnected, ErrQueueFull). Every node, this one included, delivers
// the broadcast when Redis sends it back, so all of them see the topic's
// offsets in one order; local subscribers get it after Publish returns,
// and not at all when Publish fails before Redis ran the script.
func (p *PubSub) Publish(ctx context.Context, m *pubsub.Message) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	if o, ok := p.hist.policy.Options(m.Topic); ok {
		_, err := p.publishHistory(ctx, m, o)
		return err
	}
	// Checked before the local delivery: a message that cannot reach the
	// other nodes reaches nobody, and its sender learns why.
	if err := p.checkSize(m.Topic, m.From, m.Event, m.Payload); err != nil {
		return err
	}
	p.reg.Dispatch(m)
	now := time.Now()
	data := make([]byte, 0, envelopeSize(p.opt.NodeID, m.From, m.Event, m.Payload))
	channel, sharded := p.topicChannel(m.Topic, now)
	return p.roundTrip(ctx, m.Topic, now, &publishReq{
		channel: channel,
		sharded: sharded,
		data:    appendEnvelope(data, p.opt.NodeID, now.UnixNano(), p.seq.Add(1), m.From, m.Event, m.Binary, m.Payload),
		done:    make(chan error, 1),
	})
}

// messageSize is the size that MaxMessageSize bounds: the channel name
// plus the envelope, counting its varints at their longest so that the
// bound does not depend on a sequence number.
func (p *PubSub) messageSize(topic, from, event string, payload []byte) int {
	n := len(p.chanPrefix) + len(topic) + envelopeSize(p.opt.NodeID, from, event, payload)
	if p.shardTopic(topic) {
		n += len("{}") // the shard channel's hash tag
	}
	return n
}

// checkSize refuses, and counts, a message above MaxMessageSize: one
// PUBLISH that large risks Redis closing every subscriber's connection
// it is sent to (its output buffer limit), losing all they had queued.
func (p *PubSub) checkSize(topic, from, event string, payload []byte) error {
	return p.checkSizeExt(topic, from, event, payload, 0)
}

// checkSizeExt is checkSize for an envelope that carries up to ext bytes
// of extension area.
func (p *PubSub) checkSizeExt(topic, from, event string, payload []byte, ext int) error {
	if n := p.messageSize(topic, from, event, payload) + ext; n > p.opt.MaxMessageSize {
		p.tooLarge.Add(1)
		if ok, sup := p.publishLog.Allow(); ok {
			p.log.Warn("redis: message above --redis-max-message-size refused", "topic", topic, "event", event, "size", n, "max", p.opt.MaxMessageSize, "suppressed", sup)
		}
		return fmt.Errorf("%w: %d bytes for Redis, above the maximum of %d", pubsub.ErrTooLarge, n, p.opt.MaxMessageSize)
	}
	return nil
}

// MaxMessageSize returns Options.MaxMessageSize, so that what publishes
// through this PubSub (presence/redis's diffs) can stay under it.
func (p *PubSub) MaxMessageSize() int { return p.opt.MaxMessageSize }

// MessageOverhead returns how many bytes a message on topic with event
// adds to its payload in the Redis message MaxMessageSize bounds (the
// position too, for a topic with history).
func (p *PubSub) MessageOverhead(topic, event string) int {
	return p.messageSize(topic, "", event, nil) + p.historyExt(topic)
}

// LimitHits implements pubsub.LimitCounter.
func (p *PubSub) LimitHits() map[string]func() uint64 {
	return map[string]func() uint64{"redis_message_size": p.tooLarge.Load}
}

var _ pubsub.LimitCounter = (*PubSub)(nil)

func (p *PubSub) publishFailed(topic string, err error) error {
	p.publishErrors.Add(1)
	if ok, n := p.publishLog.Allow(); ok {
		p.log.Warn("redis: publish failed; broadcast not relayed to other nodes",
			"topic", topic, "err", err, "suppressed", n)
	}
	return err
}

func (p *PubSub) lostError() error {
	since := time.Since(time.Unix(0, p.lostAt.Load())).Round(time.Millisecond)
	return fmt.Errorf("%w (connection lost %s ago)", ErrDisconnected, since)
}

// Ping implements node.Pinger for /readyz: it fails while the node's
// pub/sub connection is down or Redis does not answer a PING.
func (p *PubSub) Ping(ctx context.Context) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	if p.lost.Load() {
		return p.lostError()
	}
	if err := p.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: ping: %w", err)
	}
	return nil
}

// Sync waits until Redis has applied every Subscribe and Unsubscribe made
// on this PubSub before the call: afterwards a broadcast published on any
// node reaches this node's subscribers of those topics. It sends a PING
// down the pub/sub connection behind the subscription commands and waits
// for its reply. It fails at once while the connection is down.
func (p *PubSub) Sync(ctx context.Context) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	ch := make(chan error, 1)
	p.mu.Lock()
	p.syncs = append(p.syncs, ch)
	p.mu.Unlock()
	p.poke()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("redis: sync: %w", ctx.Err())
	case <-p.done:
		return pubsub.ErrClosed
	}
}

// Close implements pubsub.PubSub: it stops the goroutines, UNSUBSCRIBEs
// (when connected; closing the connection drops the subscriptions on the
// server anyway) and closes the connections. Publishes still waiting get
// pubsub.ErrClosed. Close is idempotent.
func (p *PubSub) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(p.done)
	p.cancel()
	p.workers.Wait()
	p.writers.stop()
	if p.shards != nil {
		p.shards.close()
	}
	if !p.lost.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		_ = p.ps.Unsubscribe(ctx)
		cancel()
	}
	err := p.ps.Close()
	if errors.Is(err, goredis.ErrClosed) {
		err = nil
	}
	p.reader.Wait()
	// After the reader: it is what starts call handlers. Their contexts
	// are canceled; their replies fail fast (closed).
	p.calls.running.Wait()
	if cerr := p.client.Close(); err == nil && !errors.Is(cerr, goredis.ErrClosed) {
		err = cerr
	}
	p.mu.Lock()
	for _, ws := range p.pongs {
		for _, w := range ws {
			w <- pubsub.ErrClosed
		}
	}
	clear(p.pongs)
	clear(p.pongLeft)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("redis: close: %w", err)
	}
	return nil
}
