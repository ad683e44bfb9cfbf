package node_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/test/redistest"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// TestRedisExampleConfig runs Example_redis's configuration, through the
// public API only, as two nodes on a real Redis: a user tracked on one is
// listed on the other, and a broadcast from one reaches the other's socket.
func TestRedisExampleConfig(t *testing.T) {
	srv := redistest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := func() *node.Node {
		router := &channels.Router{}
		router.Handle("room:*", func(string) channels.Channel { return &Lobby{} })
		n, err := node.NewWithContext(ctx, node.Config{
			Addr:         "127.0.0.1:0", // Example_redis: ":4000"
			Router:       router,
			Redis:        srv.URL(), // Example_redis: "redis://localhost:6379/0"
			RedisOptions: node.RedisOptions{Prefix: "myapp"},
			Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Shutdown(context.Background()) })
		return n
	}
	a, b := start(), start()
	join := func(n *node.Node, user string) *wsclient.Client {
		c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if reply, err := c.Join(ctx, "room:lobby", map[string]string{"user": user}); err != nil || reply.Status != "ok" {
			t.Fatalf("join: %v %v", reply, err)
		}
		return c
	}
	bob := join(b, "bob")
	join(a, "alice")
	if _, err := bob.Await(ctx, func(m wsclient.Message) bool {
		return m.Event == "presence_diff" && strings.Contains(string(m.Payload), `"alice"`)
	}); err != nil {
		t.Fatal(err)
	}
	state, err := b.Presence().List(ctx, "room:lobby")
	if err != nil {
		t.Fatal(err)
	}
	if len(state["alice"].Metas) != 1 || len(state["bob"].Metas) != 1 {
		t.Fatalf("b lists %v, want alice (tracked on a) and bob", state)
	}
	if err := a.Endpoint().Broadcast(ctx, "room:lobby", "news", map[string]string{"from": "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Await(ctx, wsclient.IsEvent("room:lobby", "news")); err != nil {
		t.Fatal(err)
	}
}
