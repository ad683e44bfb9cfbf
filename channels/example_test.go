package channels_test

import (
	"context"
	"fmt"

	"github.com/channelsd/channelsd/channels"
)

// Chat is a channel: one value per join, its fields are that join's state.
type Chat struct {
	user string
}

func (c *Chat) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	var p struct {
		User string `json:"user"`
	}
	if err := params.Decode(&p); err != nil || p.User == "" {
		// Refuse: the only join error whose text reaches the client;
		// any other error is logged and answered "join crashed".
		return nil, channels.Refuse("unauthorized")
	}
	c.user = p.User
	return map[string]string{"welcome": c.user}, nil
}

// AfterJoiner is found by type assertion: this line makes a misspelled
// AfterJoin a compile error instead of a method that never runs.
var _ channels.AfterJoiner = (*Chat)(nil)

// AfterJoin runs once the ok reply is queued: the place for presence.
func (c *Chat) AfterJoin(s *channels.ChannelSocket) {
	_ = s.Track(c.user, map[string]any{"device": "web"})
	_ = s.PushPresenceState()
}

func (c *Chat) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	switch in.Event {
	case "new_msg":
		var m struct {
			Body string `json:"body"`
		}
		if err := in.Payload.Decode(&m); err != nil {
			return channels.ErrorReason("invalid payload")
		}
		_ = s.Broadcast("new_msg", map[string]string{"user": c.user, "body": m.Body})
		return channels.Ok(nil)
	case "slow":
		// Answer later, from another goroutine, without holding up the
		// socket's other messages.
		go func() { _ = s.Reply(in.Ref, "ok", map[string]string{"done": "yes"}) }()
		return channels.NoReply()
	case "bye":
		return channels.Ok(nil).AndStop() // reply, then phx_close
	}
	return channels.ErrorReason("unknown event")
}

// An application is a Router of topic patterns to channel factories and a
// SocketHandler that authenticates connections.
func Example() {
	router := &channels.Router{}
	router.Handle("chat:*", func(topic string) channels.Channel { return &Chat{} })

	auth := channels.SocketHandlerFunc(func(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
		if info.Params["token"] == "" {
			return channels.Identity{}, &channels.ConnectError{Status: 403, Reason: "token required"}
		}
		// Sockets sharing an id are disconnected together (Endpoint.Disconnect).
		return channels.Identity{ID: "user:" + info.Params["token"]}, nil
	})
	_ = auth // pass both to node.New(node.Config{Router: router, SocketHandler: auth}); see node's Example

	_, ok := router.Match("chat:lobby")
	fmt.Println(ok)
	// Output: true
}
