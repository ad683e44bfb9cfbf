package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/test/redistest"
)

// testCluster is a Redis Cluster of masters on loopback, without
// replicas, and a plain client per master.
type testCluster struct {
	servers []*redisServer
	masters []*goredis.Client
	ids     []string
}

func (c *testCluster) url() string {
	addrs := make([]string, len(c.servers))
	for i, s := range c.servers {
		addrs[i] = s.Addr()
	}
	return "redis-cluster://" + strings.Join(addrs, ",")
}

// owner returns the index of the master that owns slot.
func (c *testCluster) owner(t testing.TB, slot int) int {
	t.Helper()
	return c.ownerSeenBy(t, 0, slot)
}

// ownerSeenBy returns the index of the master that master i says owns
// slot.
func (c *testCluster) ownerSeenBy(t testing.TB, i, slot int) int {
	t.Helper()
	slots, err := c.masters[i].ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range slots {
		if slot >= r.Start && slot <= r.End {
			for i, s := range c.servers {
				if r.Nodes[0].Addr == s.Addr() {
					return i
				}
			}
		}
	}
	t.Fatalf("no master owns slot %d", slot)
	return -1
}

func startCluster(t testing.TB) *testCluster { return startClusterOf(t, 3) }

// startClusterOf forms a cluster of n masters, each owning an equal
// range of the slots.
func startClusterOf(t testing.TB, n int) *testCluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := &testCluster{servers: redistest.StartCluster(t, n)}
	for i, s := range c.servers {
		m := inspector(t, s)
		c.masters = append(c.masters, m)
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n-1
		if err := m.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			t.Fatal(err)
		}
		id, err := m.ClusterMyID(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		c.ids = append(c.ids, id)
	}
	for _, s := range c.servers[1:] {
		port, _ := strconv.Atoi(s.Addr()[strings.LastIndexByte(s.Addr(), ':')+1:])
		if err := c.masters[0].ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(port)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// The cluster offers no event for "formed": poll its state.
	eventually(t, 20*time.Second, "the cluster to form", func() bool {
		for _, m := range c.masters {
			info, err := m.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d\r\n", n)) {
				return false
			}
		}
		return true
	})
	return c
}

// clusterNode is a PubSub on c whose Gate lets it write sharded pub/sub
// (every node it knows reads it).
func clusterNode(t testing.TB, c *testCluster, id string, gate *Gate) *PubSub {
	t.Helper()
	p := node(t, c.servers[0], id, func(o *Options) { o.URL = c.url() })
	p.SetGate(gate)
	return p
}

func shardNumSub(t testing.TB, m *goredis.Client, channel string) int64 {
	t.Helper()
	got, err := m.PubSubShardNumSub(context.Background(), channel).Result()
	if err != nil {
		t.Fatal(err)
	}
	return got[channel]
}

// commandCalls returns the calls of cmd in m's INFO commandstats.
func commandCalls(t testing.TB, m *goredis.Client, cmd string) int {
	t.Helper()
	info, err := m.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	v := infoField(info, "cmdstat_"+cmd)
	calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
	n, _ := strconv.Atoi(calls)
	return n
}

// TestKeySlotMatchesRedis: the node routes each SSUBSCRIBE by its own
// slot computation, which must be Redis's, hash tags included.
func TestKeySlotMatchesRedis(t *testing.T) {
	c := startCluster(t)
	for _, k := range []string{"", "a", "foo", "somekey", "test:t:{room:1}", "{}x", "a{b}c{d}", "x{}{y}", "{{z}}", "é:{ü}", "test:t:{{x}"} {
		want, err := c.masters[0].ClusterKeySlot(context.Background(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := keySlot(k); int64(got) != want {
			t.Errorf("keySlot(%q) = %d, Redis says %d", k, got, want)
		}
	}
}

// TestShardedPubSubOnCluster: with every node reading sharded pub/sub,
// broadcasts go by SPUBLISH to the topic's shard, each subscribing node
// holds an SSUBSCRIBE on the master of each topic's slot, topics spread
// over every master, and a topic with history goes the same way (its
// script SPUBLISHes).
func TestShardedPubSubOnCluster(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", openGate("a"))
	b := clusterNode(t, c, "b", openGate("b"))
	b.SetHistoryPolicy(roomHistory(10, time.Minute))
	a.SetHistoryPolicy(roomHistory(10, time.Minute))

	const n = 30
	rec := make([]*recorder, n)
	for i := range rec {
		rec[i] = &recorder{id: fmt.Sprint("r", i)}
		mustSubscribe(t, b, fmt.Sprint("lobby:", i), rec[i])
	}
	hist := &recorder{id: "h"}
	mustSubscribe(t, b, "room:1", hist)
	syncAll(t, b)
	if got := b.Stats().ShardSubscriptions; got != n+1 {
		t.Fatalf("b holds %d shard subscriptions, want %d", got, n+1)
	}
	publishes := make([]int, 3)
	perMaster := make([]int, 3)
	for i, m := range c.masters {
		publishes[i] = commandCalls(t, m, "publish")
	}
	for i := range n {
		topic := fmt.Sprint("lobby:", i)
		ch := b.shardChannel(topic)
		owner := c.owner(t, keySlot(ch))
		perMaster[owner]++
		if got := shardNumSub(t, c.masters[owner], ch); got != 1 {
			t.Errorf("%s: %d shard subscribers on its master, want 1", ch, got)
		}
		publish(t, a, topic, "e")
	}
	for i := range rec {
		rec[i].waitCount(t, 1)
	}
	pos, err := a.PublishAt(context.Background(), &pubsub.Message{Topic: "room:1", Event: "h", Payload: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	hist.waitCount(t, 1)
	if got := hist.messages()[0].Pos; got != pos {
		t.Errorf("history broadcast delivered at %v, published at %v", got, pos)
	}
	for i, m := range c.masters {
		t.Logf("master %d: %d of the topics, %d SPUBLISH", i, perMaster[i], commandCalls(t, m, "spublish"))
		if perMaster[i] == 0 {
			t.Errorf("master %d owns none of %d topics", i, n)
		}
		if commandCalls(t, m, "spublish") == 0 {
			t.Errorf("master %d ran no SPUBLISH", i)
		}
		if got := commandCalls(t, m, "publish"); got != publishes[i] {
			t.Errorf("master %d ran %d PUBLISH for the topics, want none", i, got-publishes[i])
		}
	}

	// The last subscriber leaving: the SSUBSCRIBE goes too.
	b.Unsubscribe("lobby:0", rec[0])
	syncAll(t, b)
	ch := b.shardChannel("lobby:0")
	if got := shardNumSub(t, c.masters[c.owner(t, keySlot(ch))], ch); got != 0 {
		t.Errorf("%s: %d shard subscribers after the last local one left, want 0", ch, got)
	}
	if got := b.Stats().ShardResubscribes; got != 0 {
		t.Errorf("%d resubscriptions counted without any slot move", got)
	}
}

// TestClassicUntilEveryNodeReadsShards: while the Gate does not say
// every node reads sharded pub/sub (an older release is live), a
// broadcast goes by PUBLISH on the classic channel, which nodes of this
// release listen on too, so it arrives, once.
func TestClassicUntilEveryNodeReadsShards(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", nil)
	b := clusterNode(t, c, "b", nil)
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "lobby", r)
	syncAll(t, b)
	spublishes := 0
	for _, m := range c.masters {
		spublishes += commandCalls(t, m, "spublish")
	}
	publish(t, a, "lobby", "e1")
	publish(t, a, "lobby", "e2")
	r.waitCount(t, 2)
	after := 0
	for _, m := range c.masters {
		after += commandCalls(t, m, "spublish")
	}
	if after != spublishes {
		t.Errorf("%d SPUBLISH with the Gate closed", after-spublishes)
	}
	// A marker behind them: nothing came twice.
	publish(t, a, "lobby", "end")
	r.waitCount(t, 3)
	if got := r.events(); strings.Join(got, ",") != "e1,e2,end" {
		t.Errorf("b received %v, want e1,e2,end", got)
	}
}

// TestShardedSubscriptionFollowsSlotMigration: when the slot of a
// subscribed topic moves to another master, Redis drops the node's
// SSUBSCRIBE (SUNSUBSCRIBE); the node subscribes again on the new owner,
// counts it, and receives the topic's broadcasts from there.
func TestShardedSubscriptionFollowsSlotMigration(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", openGate("a"))
	b := clusterNode(t, c, "b", openGate("b"))
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "lobby", r)
	other := &recorder{id: "o"}
	mustSubscribe(t, b, "other", other)
	syncAll(t, b)
	ch := b.shardChannel("lobby")
	slot := keySlot(ch)
	from := c.owner(t, slot)
	to := (from + 1) % 3
	if got := shardNumSub(t, c.masters[from], ch); got != 1 {
		t.Fatalf("%s: %d shard subscribers on master %d before the move, want 1", ch, got, from)
	}

	// An empty slot moves by SETSLOT NODE alone: the target first, then
	// the source (which drops its subscribers), as redis-cli does.
	ctx := context.Background()
	for _, i := range []int{to, from, (from + 2) % 3} {
		if err := c.masters[i].Do(ctx, "cluster", "setslot", slot, "node", c.ids[to]).Err(); err != nil {
			t.Fatalf("SETSLOT on master %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "b to subscribe again on the slot's new master", func() bool {
		return shardNumSub(t, c.masters[to], ch) == 1
	})
	if got := b.Stats().ShardResubscribes; got != 1 {
		t.Errorf("ShardResubscribes = %d, want 1", got)
	}
	// One map: b's publishes of the topic go where it subscribed it.
	if got := b.slots.master(ctx, ch); got != c.servers[to].Addr() {
		t.Errorf("b's slot map names %s for the topic, subscribed on master %d (%s)", got, to, c.servers[to].Addr())
	}
	if got := shardNumSub(t, c.masters[from], ch); got != 0 {
		t.Errorf("%s: still %d shard subscribers on the old master", ch, got)
	}
	// a's slot map is stale until a MOVED reply makes go-redis reload
	// it; the writer sends that publish again to the new owner.
	publish(t, a, "lobby", "after")
	r.waitCount(t, 1)
	publish(t, a, "other", "x")
	other.waitCount(t, 1)
}

// TestShardedPubSubVersion: New reads each master's INFO and refuses a
// version below 7 (ErrRedisTooOld).
func TestShardedPubSubVersion(t *testing.T) {
	info := "# Server\r\nredis_version:6.2.14\r\nredis_mode:cluster\r\n"
	if got := infoField(info, "redis_version"); got != "6.2.14" {
		t.Fatalf("infoField = %q", got)
	}
	for v, ok := range map[string]bool{"6.2.14": false, "7.0.15": true, "10.0.0": true, "": false, "5": false} {
		if got := supportsShardedPubSub(v); got != ok {
			t.Errorf("version %q accepted %v, want %v", v, got, ok)
		}
	}
}

// TestShardConnectionLossResubscribes: a shard connection that Redis
// closes (as a master's crash or a failover would) is replaced, its
// topics are subscribed again and counted, and broadcasts flow again.
func TestShardConnectionLossResubscribes(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", openGate("a"))
	b := clusterNode(t, c, "b", openGate("b"))
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "lobby", r)
	syncAll(t, b)
	ch := b.shardChannel("lobby")
	owner := c.masters[c.owner(t, keySlot(ch))]
	ctx := context.Background()
	if err := owner.Do(ctx, "client", "kill", "type", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b to replace the lost shard connection", func() bool {
		st := b.Stats()
		return st.ShardLost >= 1 && st.ShardResubscribes >= 1 && shardNumSub(t, owner, ch) == 1
	})
	syncAll(t, b)
	publish(t, a, "lobby", "after")
	r.waitCount(t, 1)
}
