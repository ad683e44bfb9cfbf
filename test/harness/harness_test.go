package harness

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// TestSingleNode checks the harness itself on one node without Redis:
// the node is ready, serves WebSockets on its published port, and Kill
// ends it and its sockets.
func TestSingleNode(t *testing.T) {
	c := Start(t, Options{Nodes: 1, NoRedis: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for name, get := range map[string]func(context.Context, int) (int, error){"readyz": c.Ready, "healthz": c.Healthy} {
		if code, err := get(ctx, 1); err != nil || code != http.StatusOK {
			t.Fatalf("/%s: %d, %v; want 200", name, code, err)
		}
	}
	if lim, err := c.NodeOpenFilesLimit(1); err != nil {
		t.Logf("open-files limit of the node's process: not readable from here: %v", err)
	} else {
		t.Logf("open-files limit of the node's process (soft/hard): %s", lim)
	}

	ws := c.Dial(ctx, 1, nil)
	if r, err := ws.Join(ctx, "conformance:harness", nil); err != nil || r.Status != "ok" {
		t.Fatalf("join: %v %v", r, err)
	}
	ref, err := ws.Push("conformance:harness", "ping", map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ws.AwaitReply(ctx, ref); err != nil || r.Status != "ok" {
		t.Fatalf("ping: %v %v", r, err)
	}

	c.Kill(1)
	st, err := ws.AwaitClose(ctx)
	if err != nil {
		t.Fatalf("the socket outlived its node: %v", err)
	}
	if st.Received {
		t.Errorf("a SIGKILLed node sent a close frame: %v", st)
	}
	if _, err := c.Ready(ctx, 1); err == nil {
		t.Errorf("/readyz answered after SIGKILL")
	}
}

// TestRedisCluster checks the harness's Redis Cluster: three masters with
// a replica each, keys of different slots served by different masters
// through RedisClient from this host, and a node that runs on it ready.
func TestRedisCluster(t *testing.T) {
	c := Start(t, Options{Nodes: 1, RedisCluster: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if code, err := c.Ready(ctx, 1); err != nil || code != http.StatusOK {
		t.Fatalf("/readyz: %d, %v; want 200", code, err)
	}
	rc := c.RedisClient()
	cc, ok := rc.(*goredis.ClusterClient)
	if !ok {
		t.Fatalf("RedisClient is a %T on a Redis Cluster", rc)
	}
	shards, err := cc.ClusterShards(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != redisClusterMasters {
		t.Fatalf("%d shards, want %d", len(shards), redisClusterMasters)
	}
	for _, s := range shards {
		if len(s.Nodes) != 1+redisClusterReplicas {
			t.Errorf("shard %v has %d nodes, want %d", s.Slots, len(s.Nodes), 1+redisClusterReplicas)
		}
	}
	// Keys on every master: written through the cluster client, each
	// master holds some of them.
	for i := range 30 {
		if err := cc.Set(ctx, fmt.Sprintf("harness-key-%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	sizes := map[string]int64{}
	err = cc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		n, err := m.DBSize(ctx).Result()
		mu.Lock()
		sizes[m.Options().Addr] = n
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for addr, n := range sizes {
		if n == 0 {
			t.Errorf("master %s holds none of 30 keys: %v", addr, sizes)
		}
	}
	t.Logf("keys per master: %v", sizes)
}
