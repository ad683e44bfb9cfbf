package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Nodes form a cluster through Redis with one setting: every node given
// the same URL shares broadcasts, presence, histories and disconnects by
// socket id. Two nodes in one process stand here for two servers: a
// client of node B receives a broadcast published through node A, and
// either node lists the users tracked on both.
//
// The URL comes from the environment, as an application's would (this
// package's tests start a loopback redis-server and set REDIS_URL). New
// waits up to RedisOptions.ConnectTimeout (30s) for a Redis that is not
// up yet; NewWithContext can stop that wait early, on a signal say.
func Example_redis() {
	start := func() *node.Node {
		router := &channels.Router{}
		router.Handle("room:*", func(string) channels.Channel { return &Lobby{} })
		n, err := node.New(node.Config{
			Addr:   "127.0.0.1:0",
			Router: router,
			// redis://, rediss:// (TLS), unix://, or
			// redis-sentinel://host1:26379,host2:26379/mymaster
			Redis: os.Getenv("REDIS_URL"),
			// Optional, as channelsd's --redis-* and --presence-* flags.
			RedisOptions: node.RedisOptions{Prefix: "myapp"},
			Logger:       slog.New(slog.DiscardHandler),
		})
		if err != nil {
			log.Fatal(err)
		}
		if err := n.Start(); err != nil {
			log.Fatal(err)
		}
		return n
	}
	a, b := start(), start()
	defer a.Shutdown(context.Background())
	defer b.Shutdown(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// join connects user to room:lobby on n, and waits for the diff that
	// announces them: their entry is in Redis by then.
	join := func(n *node.Node, user string) *wsclient.Client {
		c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
		if err != nil {
			log.Fatal(err)
		}
		if reply, err := c.Join(ctx, "room:lobby", map[string]string{"user": user}); err != nil || reply.Status != "ok" {
			log.Fatal("join: ", reply.Status, err)
		}
		if _, err := c.Await(ctx, isJoinOf(user)); err != nil {
			log.Fatal(err)
		}
		return c
	}
	bob := join(b, "bob")
	defer bob.Close()
	alice := join(a, "alice")
	defer alice.Close()
	// Node A's diff reaches bob through Redis.
	if _, err := bob.Await(ctx, isJoinOf("alice")); err != nil {
		log.Fatal(err)
	}

	// A broadcast from Go on node A, as Phoenix's Endpoint.broadcast/3.
	if err := a.Endpoint().Broadcast(ctx, "room:lobby", "news", map[string]string{"from": "A"}); err != nil {
		log.Fatal(err)
	}
	news, err := bob.Await(ctx, wsclient.IsEvent("room:lobby", "news"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("bob on B got:", string(news.Payload))

	for _, on := range []struct {
		name string
		n    *node.Node
	}{{"A", a}, {"B", b}} {
		state, err := on.n.Presence().List(ctx, "room:lobby")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("listed on", on.name+":", slices.Sorted(maps.Keys(state)))
	}
	// Output:
	// bob on B got: {"from":"A"}
	// listed on A: [alice bob]
	// listed on B: [alice bob]
}

// isJoinOf matches a presence_diff on room:lobby that joins user.
func isJoinOf(user string) func(wsclient.Message) bool {
	return func(m wsclient.Message) bool {
		if m.Topic != "room:lobby" || m.Event != "presence_diff" {
			return false
		}
		var diff struct{ Joins map[string]json.RawMessage }
		return json.Unmarshal(m.Payload, &diff) == nil && diff.Joins[user] != nil
	}
}
