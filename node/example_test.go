package node_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Room is one join of a "room:*" topic.
type Room struct{}

// The compiler checks the optional behaviours: without these lines a
// misspelled AfterJoin would compile and never run.
var _ channels.AfterJoiner = (*Room)(nil)

func (r *Room) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	return map[string]string{"joined": s.Topic()}, nil
}

// AfterJoin pushes to this client alone.
func (r *Room) AfterJoin(s *channels.ChannelSocket) {
	_ = s.Push("welcome", map[string]string{"motd": "be nice"})
}

func (r *Room) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	var m struct {
		Body string `json:"body"`
	}
	if err := in.Payload.Decode(&m); err != nil {
		return channels.ErrorReason("bad payload")
	}
	switch in.Event {
	case "shout": // to every subscriber of the topic, on every node
		_ = s.Broadcast("shout", map[string]string{"body": strings.ToUpper(m.Body)})
		return channels.Ok(nil)
	case "ping": // a reply to this push
		return channels.Ok(map[string]string{"pong": m.Body})
	}
	return channels.ErrorReason("unknown event")
}

// A node serving one channel, and a client speaking the Phoenix protocol
// to it: a push from the server, a reply, and a broadcast.
func Example() {
	router := &channels.Router{}
	router.Handle("room:*", func(topic string) channels.Channel { return &Room{} })
	n, err := node.New(node.Config{
		Addr:   "127.0.0.1:0", // a free port; Addr() tells which
		Router: router,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	if err := n.Start(); err != nil { // serves in the background
		panic(err)
	}
	defer n.Shutdown(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	reply, _ := c.Join(ctx, "room:lobby", nil)
	fmt.Println("join:", reply.Status, string(reply.Payload))
	push, _ := c.Await(ctx, wsclient.IsEvent("room:lobby", "welcome"))
	fmt.Println("push:", string(push.Payload))

	ref, _ := c.Push("room:lobby", "ping", map[string]string{"body": "hi"})
	reply, _ = c.AwaitReply(ctx, ref)
	fmt.Println("reply:", reply.Status, string(reply.Payload))

	_, _ = c.Push("room:lobby", "shout", map[string]string{"body": "hello"})
	bc, _ := c.Await(ctx, wsclient.IsEvent("room:lobby", "shout"))
	fmt.Println("broadcast:", string(bc.Payload))
	// Output:
	// join: ok {"joined":"room:lobby"}
	// push: {"motd":"be nice"}
	// reply: ok {"pong":"hi"}
	// broadcast: {"body":"HELLO"}
}
