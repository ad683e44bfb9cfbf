package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Sharded pub/sub on a Redis Cluster. A topic's broadcasts travel on the
// shard channel "<prefix>:t:{<topic>}", whose hash tag puts it in the
// slot of the topic's history keys. Redis keeps an SPUBLISH on the shard
// that owns the channel's slot and delivers it only to the SSUBSCRIBErs
// connected to that shard, so every node holds one sharded pub/sub
// connection per master it needs, and routes each topic's SSUBSCRIBE to
// the master of its slot.
//
// go-redis binds a PubSub to one node when it dials (a cluster client's
// by the slot of the first channel), and on a reconnect it replays every
// shard channel it has in one SSUBSCRIBE, which Redis refuses once they
// span slots. So a shard connection is never reconnected in place: the
// first failure (a read error, a silence, a refused command) closes it,
// and its topics are routed again, on a fresh slot map, to whichever
// master owns them now. The same happens to the channels of a slot that
// the server unsubscribes the node from (it sends an SUNSUBSCRIBE when
// the slot migrates away, or when its master becomes a replica).

// shardTopic reports whether topic travels on sharded pub/sub (on a
// cluster): the node's own topics ("phx:...": calls, cluster reports,
// socket ids) and pattern topics stay on the classic connection.
func (p *PubSub) shardTopic(topic string) bool {
	return p.shards != nil && !strings.HasPrefix(topic, "phx:") && !p.patternTopic(topic)
}

// shardChannel is topic's shard channel.
func (p *PubSub) shardChannel(topic string) string {
	return p.chanPrefix + "{" + topic + "}"
}

// topicChannel returns the channel a broadcast on topic is published on,
// and whether with SPUBLISH: the shard channel once every live node reads
// it (FormShard 2), the classic one before.
func (p *PubSub) topicChannel(topic string, now time.Time) (string, bool) {
	if p.shardTopic(topic) && p.mayShard.mayWrite(p.Gate(), func() time.Time { return now }) {
		return p.shardChannel(topic), true
	}
	return p.chanPrefix + topic, false
}

// shardSet is the node's sharded subscriptions. The reconciler alone
// calls its methods and owns the fields not marked otherwise; the shard
// readers report to it through mu.
type shardSet struct {
	p    *PubSub
	base goredis.Options // template of the per-master clients

	reload  bool // the slot map may be stale: read it again before routing
	clients map[string]*goredis.Client
	shards  map[string]*shard // live shard connections by master address
	on      map[string]*shard // topic -> the shard its SSUBSCRIBE went to
	retry   map[string]struct{}

	mu      sync.Mutex
	dropped map[*shard][]string // guarded by mu: channels the server unsubscribed
	lost    map[*shard]error    // guarded by mu: shards whose connection failed

	held         atomic.Int64
	resubscribes atomic.Uint64
	lostCount    atomic.Uint64
}

// shard is one sharded pub/sub connection, to one master.
type shard struct {
	addr   string
	ps     *goredis.PubSub
	topics map[string]struct{} // reconciler only
	done   chan struct{}       // closed when the reader returns
	closed atomic.Bool

	mu     sync.Mutex
	unsubs map[string]int // guarded by mu: our SUNSUBSCRIBEs not yet answered, by channel
	tokens []string       // guarded by mu: Sync PINGs not yet answered
}

func newShardSet(p *PubSub, co *goredis.ClusterOptions) *shardSet {
	return &shardSet{
		p: p,
		base: goredis.Options{
			ClientName: co.ClientName, Dialer: co.Dialer, OnConnect: co.OnConnect,
			Protocol: co.Protocol, Username: co.Username, Password: co.Password,
			CredentialsProvider: co.CredentialsProvider, CredentialsProviderContext: co.CredentialsProviderContext,
			MaxRetries: co.MaxRetries, DialTimeout: co.DialTimeout, DialerRetries: co.DialerRetries,
			ReadTimeout: co.ReadTimeout, WriteTimeout: co.WriteTimeout,
			ContextTimeoutEnabled: co.ContextTimeoutEnabled,
			PoolSize:              1,
			ReadBufferSize:        co.ReadBufferSize, WriteBufferSize: co.WriteBufferSize,
			DisableIdentity: true, TLSConfig: co.TLSConfig,
			MaintNotificationsConfig: co.MaintNotificationsConfig,
		},
		clients: make(map[string]*goredis.Client),
		shards:  make(map[string]*shard),
		on:      make(map[string]*shard),
		retry:   make(map[string]struct{}),
	}
}

// apply brings the sharded subscriptions one pass closer to the
// registry: add and remove are topics that gained their first or lost
// their last local subscriber (shardTopic ones only). On retry or tick it
// also retries what failed; on tick it PINGs every shard connection.
func (s *shardSet) apply(add, remove []string, retry, tick bool) {
	p := s.p
	s.takeEvents()
	for _, t := range remove {
		delete(s.retry, t)
		sh := s.on[t]
		if sh == nil {
			continue
		}
		delete(s.on, t)
		delete(sh.topics, t)
		if sh.closed.Load() {
			continue
		}
		ch := p.shardChannel(t)
		sh.mu.Lock()
		sh.unsubs[ch]++
		sh.mu.Unlock()
		// A failure needs no retry: the connection is then replaced by
		// one that never had the channel.
		ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
		if err := sh.ps.SUnsubscribe(ctx, ch); err != nil {
			s.lose(sh, err)
		}
		cancel()
	}
	fresh := false
	for _, t := range add {
		if s.on[t] == nil {
			if _, ok := s.retry[t]; !ok {
				s.retry[t] = struct{}{}
				fresh = true
			}
		}
	}
	s.takeEvents()
	if len(s.retry) > 0 && (fresh || retry || tick) {
		s.subscribeRetry()
	}
	if tick {
		for addr, sh := range s.shards {
			if len(sh.topics) == 0 {
				// After a failover or a migration nothing may be left on
				// a master: do not hold its connection.
				s.closeShard(sh)
				delete(s.shards, addr)
				continue
			}
			ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
			if err := sh.ps.Ping(ctx); err != nil {
				s.lose(sh, err)
			}
			cancel()
		}
		s.takeEvents()
	}
	s.held.Store(int64(len(s.on)))
}

// subscribeRetry routes every topic waiting for a subscription to the
// master of its slot, one SSUBSCRIBE per slot (Redis refuses one that
// spans slots).
func (s *shardSet) subscribeRetry() {
	p := s.p
	mctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
	defer cancel()
	if s.reload {
		if err := p.slots.reload(mctx); err != nil {
			if !p.lost.Load() {
				p.log.Warn("redis: reading the slot map failed; sharded subscriptions wait", "topics", len(s.retry), "err", err)
			}
			return
		}
		s.reload = false
	}
	type group struct {
		addr string
		slot int
	}
	groups := make(map[group][]string)
	for t := range s.retry {
		ch := p.shardChannel(t)
		slot := keySlot(ch)
		addr := p.slots.master(mctx, ch)
		if addr == "" {
			s.reload = true
			continue
		}
		g := group{addr, slot}
		groups[g] = append(groups[g], t)
	}
	for g, topics := range groups {
		sh := s.shard(g.addr)
		for chunk := range chunks(topics) {
			if sh.closed.Load() {
				break
			}
			chans := make([]string, len(chunk))
			for i, t := range chunk {
				chans[i] = p.shardChannel(t)
			}
			ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
			err := sh.ps.SSubscribe(ctx, chans...)
			cancel()
			if err != nil {
				s.lose(sh, err)
				break
			}
			for _, t := range chunk {
				delete(s.retry, t)
				s.on[t] = sh
				sh.topics[t] = struct{}{}
			}
		}
	}
	s.takeEvents()
}

// shard returns the live connection to the master at addr, starting one
// (and its reader) when there is none.
func (s *shardSet) shard(addr string) *shard {
	if sh := s.shards[addr]; sh != nil {
		return sh
	}
	c := s.clients[addr]
	if c == nil {
		o := s.base
		o.Addr = addr
		c = goredis.NewClient(&o)
		s.clients[addr] = c
	}
	sh := &shard{
		addr:   addr,
		ps:     c.Subscribe(s.p.ctx),
		topics: make(map[string]struct{}),
		done:   make(chan struct{}),
		unsubs: make(map[string]int),
	}
	s.shards[addr] = sh
	s.p.reader.Add(1)
	go s.read(sh)
	return sh
}

// lose reports a shard connection as failed (from any goroutine); the
// reconciler closes it and routes its topics again.
func (s *shardSet) lose(sh *shard, err error) {
	s.mu.Lock()
	if s.lost == nil {
		s.lost = make(map[*shard]error)
	}
	if _, ok := s.lost[sh]; !ok {
		s.lost[sh] = err
	}
	s.mu.Unlock()
	s.p.reg.ForgetTops() // its topics' broadcasts may be missed (tops.go)
	s.p.poke()
}

// takeEvents applies what the readers reported: failed connections and
// channels the server unsubscribed. Each topic concerned is subscribed
// again on a fresh slot map, and counted (Stats.ShardResubscribes).
func (s *shardSet) takeEvents() {
	s.mu.Lock()
	lost, dropped := s.lost, s.dropped
	s.lost, s.dropped = nil, nil
	s.mu.Unlock()
	p := s.p
	for sh, err := range lost {
		if s.shards[sh.addr] == sh {
			delete(s.shards, sh.addr)
		}
		if !sh.closed.Load() {
			s.lostCount.Add(1)
			p.log.Warn("redis: shard connection lost; its topics are subscribed again", "master", sh.addr, "topics", len(sh.topics), "err", err)
		}
		s.closeShard(sh)
		for t := range sh.topics {
			if s.on[t] == sh {
				delete(s.on, t)
				s.retry[t] = struct{}{}
				s.resubscribes.Add(1)
			}
		}
		clear(sh.topics)
		s.reload = true
	}
	for sh, chans := range dropped {
		n := 0
		for _, ch := range chans {
			t, ok := strings.CutPrefix(ch, p.chanPrefix+"{")
			if !ok {
				continue
			}
			t = strings.TrimSuffix(t, "}")
			if s.on[t] != sh {
				continue
			}
			delete(s.on, t)
			delete(sh.topics, t)
			s.retry[t] = struct{}{}
			s.resubscribes.Add(1)
			n++
		}
		if n > 0 {
			s.reload = true
			p.log.Info("redis: Redis moved sharded subscriptions away (slot migration or failover); subscribing again", "master", sh.addr, "topics", n)
		}
	}
}

// closeShard closes sh's connection; its reader returns, and the Sync
// PINGs it had not answered fail.
func (s *shardSet) closeShard(sh *shard) {
	if !sh.closed.CompareAndSwap(false, true) {
		return
	}
	_ = sh.ps.Close()
	sh.mu.Lock()
	tokens := sh.tokens
	sh.tokens = nil
	sh.mu.Unlock()
	for _, tok := range tokens {
		s.p.pongFailed(tok, ErrDisconnected)
	}
}

// ping sends a Sync barrier's PING on every shard connection and
// returns how many were sent.
func (s *shardSet) ping(token string) int {
	n := 0
	for _, sh := range s.shards {
		if sh.closed.Load() {
			continue
		}
		sh.mu.Lock()
		sh.tokens = append(sh.tokens, token)
		sh.mu.Unlock()
		n++
	}
	return n
}

// sendPings PINGs token down every shard connection ping counted.
func (s *shardSet) sendPings(token string) {
	for _, sh := range s.shards {
		sh.mu.Lock()
		has := len(sh.tokens) > 0 && sh.tokens[len(sh.tokens)-1] == token
		sh.mu.Unlock()
		if !has {
			continue
		}
		ctx, cancel := context.WithTimeout(s.p.ctx, s.p.opt.PublishTimeout)
		if err := sh.ps.Ping(ctx, token); err != nil {
			// Closing it (takeEvents) fails the token.
			s.lose(sh, err)
		}
		cancel()
	}
}

// read receives from one shard connection until it fails or is closed.
func (s *shardSet) read(sh *shard) {
	p := s.p
	defer p.reader.Done()
	defer close(sh.done)
	rd := readDeadline{parent: p.ctx, window: 6 * p.opt.HealthCheckInterval}
	defer rd.stop()
	for {
		msg, err := sh.ps.Receive(rd.context())
		if err != nil {
			if p.ctx.Err() != nil || sh.closed.Load() || errors.Is(err, goredis.ErrClosed) {
				return
			}
			// An error reply (MOVED while the slot map was stale, say)
			// cannot be matched to its channels: route them all again.
			s.lose(sh, err)
			return
		}
		switch msg := msg.(type) {
		case *goredis.Message:
			p.handle(msg.Channel, msg.Payload, true)
		case *goredis.Subscription:
			if msg.Kind != "sunsubscribe" {
				continue
			}
			sh.mu.Lock()
			ours := sh.unsubs[msg.Channel] > 0
			if ours {
				if sh.unsubs[msg.Channel]--; sh.unsubs[msg.Channel] == 0 {
					delete(sh.unsubs, msg.Channel)
				}
			}
			sh.mu.Unlock()
			if !ours {
				s.mu.Lock()
				if s.dropped == nil {
					s.dropped = make(map[*shard][]string)
				}
				s.dropped[sh] = append(s.dropped[sh], msg.Channel)
				s.mu.Unlock()
				p.poke()
			}
		case *goredis.Pong:
			if msg.Payload == "" {
				continue
			}
			sh.mu.Lock()
			for i, tok := range sh.tokens {
				if tok == msg.Payload {
					sh.tokens = append(sh.tokens[:i], sh.tokens[i+1:]...)
					break
				}
			}
			sh.mu.Unlock()
			p.pong(msg.Payload)
		}
	}
}

// close closes every shard connection and per-master client, after the
// reconciler has stopped.
func (s *shardSet) close() {
	for _, sh := range s.shards {
		s.closeShard(sh)
	}
	s.mu.Lock()
	for sh := range s.lost {
		s.closeShard(sh)
	}
	s.mu.Unlock()
	for _, c := range s.clients {
		_ = c.Close()
	}
}

// checkShardedPubSub fails unless every master of the cluster runs Redis
// 7 or later, which sharded pub/sub needs: an older master would refuse
// every SSUBSCRIBE and SPUBLISH while the node looked healthy.
func checkShardedPubSub(ctx context.Context, cc *goredis.ClusterClient) error {
	var mu sync.Mutex
	var old []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
		info, err := c.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		v := infoField(info, "redis_version")
		if !supportsShardedPubSub(v) {
			mu.Lock()
			old = append(old, c.Options().Addr+" runs "+v)
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis: reading the masters' versions: %w", err)
	}
	if len(old) > 0 {
		return fmt.Errorf("%w: sharded pub/sub needs Redis 7 or later on every master; %s", ErrRedisTooOld, strings.Join(old, ", "))
	}
	return nil
}

// supportsShardedPubSub reports whether a Redis of version v (its
// redis_version) has sharded pub/sub: 7.0 and later.
func supportsShardedPubSub(v string) bool {
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	return err == nil && n >= 7
}

// infoField returns one field of an INFO reply.
func infoField(info, name string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
