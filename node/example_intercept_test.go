package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Chat intercepts its "msg" broadcasts to tell each subscriber which
// messages are its own.
type Chat struct{ user string }

// Without this line, a HandleOut with a wrong signature would compile
// and never run: broadcasts would reach clients untouched.
var _ channels.Interceptor = (*Chat)(nil)

func (c *Chat) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	var p struct {
		User string `json:"user"`
	}
	if err := params.Decode(&p); err != nil || p.User == "" {
		return nil, channels.Refuse("user required")
	}
	c.user = p.User
	return nil, nil
}

func (c *Chat) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	var m struct {
		Body string `json:"body"`
	}
	if in.Event != "msg" || in.Payload.Decode(&m) != nil {
		return channels.ErrorReason("bad message")
	}
	_ = s.Broadcast("msg", map[string]string{"from": c.user, "body": m.Body})
	return channels.Ok(nil)
}

// Intercepts is read once per join, before Join.
func (c *Chat) Intercepts() []string { return []string{"msg"} }

// HandleOut runs once per subscriber and intercepted broadcast, one
// callback at a time with the join's others, so c.user needs no lock.
// What it pushes may reach the client after broadcasts of events it
// does not intercept that were published later.
func (c *Chat) HandleOut(s *channels.ChannelSocket, out channels.Out) {
	var m struct {
		From string `json:"from"`
		Body string `json:"body"`
	}
	if out.Payload.Decode(&m) != nil {
		return // not pushed at all
	}
	_ = s.Push(out.Event, map[string]any{"from": m.From, "body": m.Body, "mine": m.From == c.user})
}

// An intercepting channel: one broadcast, rewritten for each subscriber.
func Example_intercept() {
	router := &channels.Router{}
	router.Handle("chat:*", func(string) channels.Channel { return &Chat{} })
	n, err := node.New(node.Config{Addr: "127.0.0.1:0", Router: router, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	if err := n.Start(); err != nil {
		panic(err)
	}
	defer n.Shutdown(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	join := func(user string) *wsclient.Client {
		c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
		if err != nil {
			panic(err)
		}
		if r, err := c.Join(ctx, "chat:1", map[string]string{"user": user}); err != nil || r.Status != "ok" {
			panic(fmt.Sprint(r.Status, err))
		}
		return c
	}
	ann, bob := join("ann"), join("bob")
	defer ann.Close()
	defer bob.Close()

	ref, _ := ann.Push("chat:1", "msg", map[string]string{"body": "hi"})
	if _, err := ann.AwaitReply(ctx, ref); err != nil {
		panic(err)
	}
	for _, c := range []*wsclient.Client{ann, bob} {
		m, _ := c.Await(ctx, wsclient.IsEvent("chat:1", "msg"))
		var got map[string]any
		_ = json.Unmarshal(m.Payload, &got)
		fmt.Println(got["from"], got["body"], "mine:", got["mine"])
	}
	// Output:
	// ann hi mine: true
	// ann hi mine: false
}
