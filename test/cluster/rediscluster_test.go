package cluster

import (
	"context"
	"sync"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/test/harness"
)

// TestRedisCluster runs the fan-out checks and the presence scenarios of
// one Redis, unchanged, on three nodes sharing a Redis Cluster of three
// masters (harness.Options.RedisCluster), then checks that the cluster
// was used as one: the nodes' keys spread over every master.
func TestRedisCluster(t *testing.T) {
	cl := harness.Start(t, harness.Options{Nodes: 3, RedisCluster: true, Args: presenceArgs()})
	runChecks(t, cl, fanoutChecks)
	runChecks(t, cl, []check{
		{"PresenceChurn", testPresenceChurn},
		{"KeysOnEveryMaster", testKeysOnEveryMaster},
		// Last: node 3 stays dead.
		{"PresenceNodeKilled", testPresenceNodeKilled},
	})
}

// testKeysOnEveryMaster: the presence hashes of the churn's rooms and the
// nodes' bookkeeping are spread over the cluster's masters, each holding
// some: the nodes did not reach only one shard.
func testKeysOnEveryMaster(t *testing.T, cl *harness.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	rc, ok := cl.RedisClient().(*goredis.ClusterClient)
	if !ok {
		t.Fatal("the cluster's Redis is not a Redis Cluster")
	}
	var mu sync.Mutex
	keys := map[string][]string{}
	err := rc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		ks, err := m.Keys(ctx, "channelsd:*").Result()
		mu.Lock()
		keys[m.Options().Addr] = ks
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 {
		t.Fatalf("%d masters answered, want 3", len(keys))
	}
	for addr, ks := range keys {
		t.Logf("%s holds %d keys: %v", addr, len(ks), ks)
		if len(ks) == 0 {
			t.Errorf("master %s holds no channelsd key", addr)
		}
	}
}
