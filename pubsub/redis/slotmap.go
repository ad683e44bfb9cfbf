package redis

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"
)

// slotMap is where the node looks up which master of a Redis Cluster
// owns a slot: the map go-redis's cluster client keeps, and sends every
// keyed command by. The writers route each publish by it (writers.go),
// so a writer's master is the one go-redis sends its batch to.
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
