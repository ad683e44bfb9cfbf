package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// A Redis Cluster as managed services run it: TLS on every link and an
// ACL user for channelsd (harness.Options.RedisClusterTLS and
// RedisClusterUser). TestRedisClusterFailover runs on one.

// channelsdUser is the nodes' Redis user as README "On a Redis Cluster"
// advises: the keys and channels under the default prefix, and the
// commands channelsd runs. testNoCommandDenied checks that the nodes never
// needed another.
func channelsdUser() *harness.RedisUser {
	return &harness.RedisUser{Name: "channelsd", Password: "channelsd-test-secret", Rules: []string{
		"resetchannels", "~channelsd:*", "&channelsd:*", "-@all",
		// PSUBSCRIBE patterns are matched literally: the nodes' one (the
		// sockets' id topics) is named as it is.
		"&channelsd:t:phx:socket:*",
		// connection and cluster topology
		"+hello", "+client|setname", "+ping", "+command", "+cluster|slots", "+info",
		// broadcasts
		"+publish", "+spublish", "+subscribe", "+ssubscribe", "+psubscribe",
		"+unsubscribe", "+sunsubscribe", "+punsubscribe",
		// history and presence (the scripts' commands included)
		"+eval", "+evalsha", "+xadd", "+xrange", "+xrevrange", "+time",
		"+hset", "+hget", "+hmget", "+hgetall", "+hdel", "+hincrby",
		"+sadd", "+srem", "+smembers", "+set", "+del", "+exists", "+pexpire",
	}}
}

// clientList is CLIENT LIST of one Redis node, each client's fields.
func clientList(ctx context.Context, m *goredis.Client) ([]map[string]string, error) {
	text, err := m.ClientList(ctx).Result()
	if err != nil {
		return nil, err
	}
	var out []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		out = append(out, f)
	}
	return out, nil
}

// testBroadcastOverTLS: clients on both nodes get a client's and the
// API's broadcasts, once each and in order, through sharded pub/sub on a
// cluster that serves TLS only; on every master, each connection of the
// nodes (publishers, presence, the per-master SSUBSCRIBE connections) is
// authenticated as the ACL user, and the topic's master has one shard
// subscription of it per node.
func testBroadcastOverTLS(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*waitTimeout)
	const topic = "conformance:tls"
	const n = 50
	a := cl.Dial(ctx, 1, nil)
	b := cl.Dial(ctx, 2, nil)
	join(ctx, t, a, topic)
	join(ctx, t, b, topic)
	awaitSubscribed(ctx, t, topic, a, map[string]*wsclient.Client{"node 2": b})
	awaitSubscribed(ctx, t, topic, b, map[string]*wsclient.Client{"node 1": a})
	refs := make([]string, 0, n+1)
	for i := 1; i <= n; i++ {
		refs = append(refs, push(t, a, topic, "broadcast", numbered{N: i}))
	}
	refs = append(refs, push(t, a, topic, "broadcast", numbered{End: true}))
	awaitReplies(ctx, t, a, refs)
	for i := 1; i <= n; i++ {
		if err := cl.Broadcast(ctx, 2, topic, "api_msg", numbered{N: i}); err != nil {
			t.Fatalf("API broadcast %d: %v", i, err)
		}
	}
	if err := cl.Broadcast(ctx, 2, topic, "api_msg", numbered{End: true}); err != nil {
		t.Fatal(err)
	}
	for who, ws := range map[string]*wsclient.Client{"node 1's client": a, "node 2's client": b} {
		checkSequence(t, who+" (a client's broadcasts)", series(ctx, t, ws, topic, "", "broadcast"), n)
		checkSequence(t, who+" (API broadcasts)", series(ctx, t, ws, topic, "", "api_msg"), n)
	}

	channel := "channelsd:t:{" + topic + "}"
	if got := shardSubscribers(ctx, t, cl, channel); got != int64(cl.N()) {
		t.Errorf("%s has %d shard subscribers, want one per node (%d)", channel, got, cl.N())
	}
	rc, ok := cl.RedisClient().(*goredis.ClusterClient)
	if !ok {
		t.Fatal("the cluster's Redis is not a Redis Cluster")
	}
	var mu sync.Mutex
	var tlsPorts []string
	perUser := map[string]int{}
	shardConns := 0
	err := rc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		cfg, err := m.ConfigGet(ctx, "*port").Result()
		if err != nil {
			return err
		}
		clients, err := clientList(ctx, m)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		tlsPorts = append(tlsPorts, fmt.Sprintf("%s: port %s, tls-port %s", m.Options().Addr, cfg["port"], cfg["tls-port"]))
		if cfg["port"] != "0" || cfg["tls-port"] != "6379" {
			t.Errorf("master %s: port %q and tls-port %q, want 0 and 6379 (TLS only)", m.Options().Addr, cfg["port"], cfg["tls-port"])
		}
		for _, c := range clients {
			if !strings.HasPrefix(c["name"], "channelsd") {
				continue // the harness's own, as the default user
			}
			perUser[c["user"]]++
			if c["ssub"] != "" && c["ssub"] != "0" {
				shardConns++
			}
			if c["user"] != "channelsd" {
				t.Errorf("master %s: connection %s (%s) authenticated as %q, want channelsd", m.Options().Addr, c["name"], c["addr"], c["user"])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v; the nodes' connections to the masters per user %v, %d of them holding shard subscriptions", tlsPorts, perUser, shardConns)
	if shardConns < cl.N() {
		t.Errorf("%d connections of the nodes hold shard subscriptions, want at least one per node", shardConns)
	}
	noCommandDenied(ctx, t, cl)
}

// testWrongPassword: a node given a wrong password for the ACL user
// refuses to start: it exits with an error naming the refusal, at once
// (a password does not become right by waiting), and without writing the
// password to its log.
func testWrongPassword(t *testing.T, cl *harness.Cluster) {
	const wrong = "not-the-password"
	e := cl.RunNodeToExit("node-wrongpass", time.Minute, "--redis", cl.RedisClusterURL("channelsd", wrong))
	last := lastLines(e.Logs, 5)
	t.Logf("exit code %d after %v; log ends:\n%s", e.ExitCode, e.Took.Round(time.Millisecond), last)
	if e.ExitCode == 0 {
		t.Errorf("the node exited with code 0")
	}
	if !strings.Contains(last, "refused the user or password") || !strings.Contains(last, "WRONGPASS") {
		t.Errorf("the node's last words do not name the refusal (and quote Redis's WRONGPASS):\n%s", last)
	}
	// It would wait for a Redis that does not answer for 30 s
	// (node.DefaultRedisConnectTimeout).
	if e.Took > 15*time.Second {
		t.Errorf("the node took %v to give up: it waited as for a Redis that does not answer", e.Took.Round(time.Millisecond))
	}
	if strings.Contains(e.Logs, wrong) {
		t.Errorf("the node wrote the password to its log")
	}
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// testNoCommandDenied: after everything the suite did, no Redis node
// refused the ACL user a command, a key or a channel.
func testNoCommandDenied(t *testing.T, cl *harness.Cluster) {
	noCommandDenied(timeout(t, waitTimeout), t, cl)
}

// noCommandDenied fails t if a live master's ACL LOG holds an entry of a
// command, key or channel refused.
func noCommandDenied(ctx context.Context, t *testing.T, cl *harness.Cluster) {
	t.Helper()
	rc, ok := cl.RedisClient().(*goredis.ClusterClient)
	if !ok {
		t.Fatal("the cluster's Redis is not a Redis Cluster")
	}
	var mu sync.Mutex
	err := rc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		entries, err := m.ACLLog(ctx, 100).Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range entries {
			if e.Reason == "auth" {
				continue // a refused login (testWrongPassword), not a refused command
			}
			t.Errorf("master %s refused %s %q to %s (%s, %d times)", m.Options().Addr, e.Reason, e.Object, e.Username, e.Context, e.Count)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
