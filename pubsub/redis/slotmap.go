package redis

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"
)

// slotMap is where the node looks up which master of a Redis Cluster
// owns a slot: the map go-redis's cluster client keeps, and sends every
// keyed command by. The writers route each publish by it (writers.go),
// so a writer's master is the one go-redis sends its batch to; the shard
// set routes each SSUBSCRIBE by it (shard.go), so a topic is subscribed
// on the master its publishes and history reads go to. The shard set
// used to read a map of its own (CLUSTER SLOTS), which could name a
// slot's new master while go-redis's still named the old one: the node
// then listened on one master and wrote to the other, and its history
// reads of the topic failed, until a MOVED answer made go-redis read its
// map again. (presence/redis runs a cluster client of its own, with its
// own map.)
//
// go-redis reads its map again by itself on a MOVED answer (in the
// background), on the node's slotReloader hook, and every minute. The
// shard set, before subscribing again after Redis moved subscriptions
// away or a shard connection failed, needs it read again now (an
// SSUBSCRIBE on a stale map is answered MOVED, which costs the whole
// shard connection): reload. One difference from a map of its own: for
// a slot that no master serves (after CLUSTER DELSLOTS or FORGET; a
// master that fails keeps its slots until its replica takes them over)
// go-redis names any node, whose refusal then closes that shard
// connection and routes its topics again, at the shard set's retry pace,
// until the slot has a master.
//
// It also holds go-redis's client of each node by address, as go-redis
// makes them (OnNewNode), for the publishes a master answers MOVED or
// ASK: the answer names a node, which go-redis has made a client for by
// the time the answer is read (it gets or makes one to follow the
// redirect, which the node's clients are set not to do). The table
// keeps the latest client made for each address; go-redis closes the
// clients of nodes that leave its map, and makes a new one if the
// address comes back, which replaces the closed one. It holds one entry
// per address the cluster ever named.
type slotMap struct {
	cc *goredis.ClusterClient
	// lookup returns the address of the master of key's slot, "" when
	// the slot map cannot be had (the cluster unreachable). (Swapped by
	// tests, hence atomic.)
	lookup atomic.Pointer[func(ctx context.Context, key string) string]

	mu      sync.Mutex
	clients map[string]*goredis.Client // guarded by mu: by address
}

// newSlotMap returns cc's slot map. It must be called before cc makes
// its first node client, so that the table sees them all.
func newSlotMap(cc *goredis.ClusterClient) *slotMap {
	m := &slotMap{cc: cc, clients: make(map[string]*goredis.Client)}
	cc.OnNewNode(func(c *goredis.Client) {
		m.mu.Lock()
		m.clients[c.Options().Addr] = c
		m.mu.Unlock()
	})
	lookup := func(ctx context.Context, key string) string {
		c, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return ""
		}
		return c.Options().Addr
	}
	m.lookup.Store(&lookup)
	return m
}

// master returns the address of the master that owns key's slot in the
// map as it is, "" if the map cannot be had.
func (m *slotMap) master(ctx context.Context, key string) string {
	return (*m.lookup.Load())(ctx, key)
}

// reload reads the slot map again from the cluster and waits for it.
// go-redis has no call for that alone: ForEachMaster reads the map
// before it visits the masters (so that it visits the current ones),
// and the visit here does nothing (TestSlotMapReload holds go-redis to
// it). A read that fails leaves the map as it was, without an error, as
// go-redis's own reloads do; the error is for a client that never had
// one.
func (m *slotMap) reload(ctx context.Context) error {
	err := m.cc.ForEachMaster(ctx, func(context.Context, *goredis.Client) error { return nil })
	if err != nil {
		return fmt.Errorf("redis: cluster slots: %w", err)
	}
	return nil
}

// node returns go-redis's client of the node at addr (as a MOVED or ASK
// answer names it), nil if go-redis has made none.
func (m *slotMap) node(addr string) *goredis.Client {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.clients[addr]; c != nil {
		return c
	}
	// go-redis writes an IPv6 host in brackets; Redis may not.
	if i := strings.LastIndexByte(addr, ':'); i > 0 && !strings.HasPrefix(addr, "[") {
		return m.clients[net.JoinHostPort(addr[:i], addr[i+1:])]
	}
	return nil
}
