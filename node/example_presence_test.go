package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"maps"
	"slices"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Lobby tracks each joining user on the room's presence once the join is
// acknowledged, as a Phoenix channel does in after_join.
type Lobby struct{ user string }

func (r *Lobby) Join(_ *channels.ChannelSocket, params channels.Payload) (any, error) {
	var p struct{ User string }
	if err := params.Decode(&p); err != nil || p.User == "" {
		return nil, channels.Refuse("a user is required")
	}
	r.user = p.User
	return nil, nil
}

func (r *Lobby) AfterJoin(s *channels.ChannelSocket) {
	if err := s.Track(r.user, map[string]any{"device": "phone"}); err != nil {
		log.Print(err)
	}
}

func (r *Lobby) HandleIn(*channels.ChannelSocket, channels.In) channels.Result {
	return channels.Ok(nil)
}

// A node lists a topic's presences from Go, as Phoenix's Presence.list/1:
// here after a client joined the room and was tracked.
func ExampleNode_Presence() {
	router := &channels.Router{}
	router.Handle("room:*", func(string) channels.Channel { return &Lobby{} })
	n, err := node.New(node.Config{Addr: "127.0.0.1:0", Router: router})
	if err != nil {
		log.Fatal(err)
	}
	if err := n.Start(); err != nil {
		log.Fatal(err)
	}
	defer n.Shutdown(context.Background())

	// A client joins room:lobby as alice, and waits to see itself tracked.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Join(ctx, "room:lobby", map[string]string{"user": "alice"}); err != nil {
		log.Fatal(err)
	}
	if _, err := client.Await(ctx, wsclient.IsEvent("room:lobby", "presence_diff")); err != nil {
		log.Fatal(err)
	}

	state, err := n.Presence().List(ctx, "room:lobby")
	if err != nil {
		log.Fatal(err)
	}
	for _, user := range slices.Sorted(maps.Keys(state)) {
		for _, meta := range state[user].Metas {
			var m struct{ Device string }
			_ = json.Unmarshal(meta, &m)
			fmt.Printf("%s on %s\n", user, m.Device)
		}
	}
	// Output:
	// alice on phone
}
