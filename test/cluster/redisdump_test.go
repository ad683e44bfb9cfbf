package cluster

// What a failed test logs of what Redis held at its end.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/test/harness"
)

// onFailureRedis runs dump, when t has failed, with a client of the
// cluster's Redis (one Redis or a Redis Cluster) and 5 s to read what
// Redis held at the end.
func onFailureRedis(t *testing.T, cl *harness.Cluster, dump func(ctx context.Context, rc goredis.UniversalClient)) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		rc := cl.For(t).RedisClient()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dump(ctx, rc)
	})
}

// redisKeys is KEYS pattern on one Redis, or on every master of a Redis
// Cluster.
func redisKeys(ctx context.Context, rc goredis.UniversalClient, pattern string) ([]string, error) {
	cc, ok := rc.(*goredis.ClusterClient)
	if !ok {
		return rc.Keys(ctx, pattern).Result()
	}
	var mu sync.Mutex
	var all []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		ks, err := m.Keys(ctx, pattern).Result()
		mu.Lock()
		all = append(all, ks...)
		mu.Unlock()
		return err
	})
	slices.Sort(all)
	return all, err
}

// logRedisPresenceOnFailure logs, if the test fails, what Redis holds of
// the cluster's presence: the nodes' heartbeats (against Redis's clock),
// each node's bookkeeping keys, and how many fields each node has in the
// given topics' hashes. A list that lacks a node's users shows here
// whether Redis lost the fields or a node stopped counting as alive.
func logRedisPresenceOnFailure(t *testing.T, cl *harness.Cluster, topics ...string) {
	onFailureRedis(t, cl, func(ctx context.Context, rc goredis.UniversalClient) {
		now, _ := rc.Time(ctx).Result()
		nodes, _ := rc.HGetAll(ctx, "channelsd:nodes").Result()
		keys, _ := redisKeys(ctx, rc, "channelsd:n:*")
		t.Logf("redis: time %d ms, heartbeats %v, node keys %v", now.UnixMilli(), nodes, keys)
		for _, topic := range topics {
			fields, _ := rc.HKeys(ctx, "channelsd:p:"+topic).Result()
			per := map[string]int{}
			for _, f := range fields {
				node, _, _ := strings.Cut(f, "/")
				per[node]++
			}
			t.Logf("redis: %s fields per node %v", topic, per)
		}
	})
}

// logRedisUsersOnFailure logs, when t failed, the users of topic whose
// fields in Redis are not exactly one, with the nodes holding them.
func logRedisUsersOnFailure(t *testing.T, cl *harness.Cluster, topic string) {
	onFailureRedis(t, cl, func(ctx context.Context, rc goredis.UniversalClient) {
		all, _ := rc.HGetAll(ctx, "channelsd:p:"+topic).Result()
		per := map[string][]string{}
		for f, v := range all {
			node, _, _ := strings.Cut(f, "/")
			var e struct {
				Key string `json:"key"`
			}
			_ = json.Unmarshal([]byte(v), &e)
			per[e.Key] = append(per[e.Key], node)
		}
		var odd []string
		for u, nodes := range per {
			if len(nodes) != 1 {
				odd = append(odd, fmt.Sprintf("%s on %v", u, nodes))
			}
		}
		slices.Sort(odd)
		t.Logf("redis: %s holds %d users; not once: %v", topic, len(per), odd)
	})
}
