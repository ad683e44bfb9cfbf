package cluster

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/test/harness"
)

// TestRedisCluster runs the fan-out checks and the node-failure
// scenarios of one Redis, unchanged, on three nodes sharing a Redis
// Cluster of three masters (harness.Options.RedisCluster), and checks
// that the cluster was used as one: broadcasts went by sharded pub/sub
// and the nodes' keys spread over every master. The kills come last, each
// on a cluster of three: a node a kill leaves dead is replaced before the
// next (a new container, a new node id).
func TestRedisCluster(t *testing.T) {
	cl := harness.Start(t, harness.Options{Nodes: 3, RedisCluster: true, Args: presenceArgs()})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	runChecks(t, cl, fanoutChecks)
	runChecks(t, cl, []check{
		{"BroadcastsUseShardedPubSub", testShardedPubSub},
		{"PresenceChurn", testPresenceChurn},
		{"KeysOnEveryMaster", testKeysOnEveryMaster},
		{"NodeKilled", testNodeKilled},
	})
	replaceDead(t, cl, lb)
	t.Run("LongPollNodeKilled", func(t *testing.T) { testLongPollNodeKilled(t, cl.For(t), lb) })
	replaceDead(t, cl, lb)
	// Last: node 3 stays dead.
	runChecks(t, cl, []check{{"PresenceNodeKilled", testPresenceNodeKilled}})
}

// replaceDead puts a new node in place of each node that a check killed,
// and waits until the load balancer routes to it again.
func replaceDead(t *testing.T, cl *harness.Cluster, lb *harness.LoadBalancer) {
	t.Helper()
	for i := 1; i <= cl.N(); i++ {
		if cl.Running(i) {
			continue
		}
		began := time.Now()
		r := cl.ReplaceNode(i, time.Second)
		lb.AwaitServer(i, "UP", 30*time.Second)
		t.Logf("%s, killed, replaced by %s in %v", r.ID, cl.Node(i).ID, time.Since(began).Round(time.Millisecond))
	}
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

// testShardedPubSub: topic broadcasts travel by sharded pub/sub. A topic
// joined on every node has one shard subscriber per node, all on the
// master of its slot; broadcasts on a dozen topics (whose slots span the
// three masters) make every master run SPUBLISHes; every node reports
// shard subscriptions.
func testShardedPubSub(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*waitTimeout)
	rc, ok := cl.RedisClient().(*goredis.ClusterClient)
	if !ok {
		t.Fatal("the cluster's Redis is not a Redis Cluster")
	}
	const topic = "conformance:sharded"
	probe := cl.Dial(ctx, 1, nil)
	join(ctx, t, probe, topic)
	subscribersFrom(ctx, t, cl, topic, 2, probe)
	for i := range 12 {
		if err := cl.Broadcast(ctx, 1+i%cl.N(), fmt.Sprint("conformance:sharded-", i), "ev", numbered{N: i}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= cl.N(); i++ {
		if v := cl.Metric(t, i, "channelsd_redis_shard_subscriptions"); v < 1 {
			t.Errorf("node %d holds %v shard subscriptions, want at least 1", i, v)
		}
	}
	channel := "channelsd:t:{" + topic + "}"
	var mu sync.Mutex
	subscribers := map[string]int64{}
	spublish := map[string]int{}
	err := rc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		n, err := m.PubSubShardNumSub(ctx, channel).Result()
		if err != nil {
			return err
		}
		info, err := m.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		subscribers[m.Options().Addr] = n[channel]
		spublish[m.Options().Addr] = commandstat(info, "spublish")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(spublish) != 3 {
		t.Fatalf("%d masters answered, want 3", len(spublish))
	}
	var total int64
	for addr, n := range subscribers {
		t.Logf("master %s: %d SPUBLISH, %d shard subscribers of %s", addr, spublish[addr], n, channel)
		total += n
		if spublish[addr] == 0 {
			t.Errorf("master %s ran no SPUBLISH", addr)
		}
		if n != 0 && n != int64(cl.N()) {
			t.Errorf("master %s has %d shard subscribers of %s, want 0 or all %d nodes", addr, n, channel, cl.N())
		}
	}
	if total != int64(cl.N()) {
		t.Errorf("%s has %d shard subscribers over the masters, want %d (one per node)", channel, total, cl.N())
	}
}

// commandstat returns the calls of cmd in an INFO commandstats reply.
func commandstat(info, cmd string) int {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":calls="); ok {
			v, _, _ = strings.Cut(v, ",")
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}
