package app

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/presence"
)

// refusedJoin joins topic with params and expects the error reply.
func (c *client) refusedJoin(topic, params, response string) {
	c.t.Helper()
	ref := c.nextRef()
	frame, _ := json.Marshal([]any{ref, ref, topic, "phx_join", json.RawMessage(params)})
	c.sock.HandleFrame(frame, false)
	c.expectReply(ref, "error", response)
}

// A user name is a presence key, repeated in every presence message of
// the room to every member: one of 300 KB joining and leaving got most of
// a room closed as slow consumers. A join naming a user over the limit is
// refused with a reason, and nothing reaches the room.
func TestRoomRefusesUserNamesOverTheLimit(t *testing.T) {
	e := newEnv(t, Options{})
	watcher := e.connect(nil)
	joinRoom(t, watcher, "room:lobby", "watcher")
	watcher.drain()

	c := e.connect(nil)
	long, _ := json.Marshal(map[string]string{"user": strings.Repeat("u", presence.DefaultMaxKeyLength+1)})
	c.refusedJoin("room:lobby", string(long), `{"reason":"user name too long"}`)
	huge, _ := json.Marshal(map[string]string{"user": strings.Repeat("u", 300<<10)})
	c.refusedJoin("room:lobby", string(huge), `{"reason":"user name too long"}`)
	watcher.none()

	// The longest name joins.
	joinRoom(t, c, "room:lobby", strings.Repeat("u", presence.DefaultMaxKeyLength))
	if d := watcher.nextEvent("presence_diff"); len(d.Payload) > 1024 {
		t.Errorf("presence_diff of %d bytes", len(d.Payload))
	}

	// Options.MaxUserLength chooses the limit.
	short := newEnv(t, Options{MaxUserLength: 3})
	sc := short.connect(nil)
	sc.refusedJoin("room:a", `{"user":"abcd"}`, `{"reason":"user name too long"}`)
	joinRoom(t, sc, "room:a", "abc")
}

// The connect parameter user names the socket for its whole life: one
// over the limit, or not UTF-8, refuses the connection (403 with the
// reason), as does a conformance socket_id alike.
func TestConnectRefusesUserNamesOverTheLimit(t *testing.T) {
	e := newEnv(t, Options{Conformance: true})
	for _, c := range []struct {
		params map[string]string
		reason string
	}{
		{map[string]string{"user": strings.Repeat("u", 300<<10)}, "user name too long"},
		{map[string]string{"user": strings.Repeat("u", presence.DefaultMaxKeyLength+1)}, "user name too long"},
		{map[string]string{"user": "ann\xff"}, "invalid user name"},
		{map[string]string{"socket_id": strings.Repeat("s", 1<<20)}, "socket_id: user name too long"},
	} {
		_, err := e.ep.Runtime().Connect(context.Background(), &channels.ConnectInfo{Params: c.params, Transport: "websocket"})
		var ce *channels.ConnectError
		if !errors.As(err, &ce) || ce.HTTPStatus() != 403 || ce.Reason != c.reason {
			t.Errorf("connect with %.40q...: %v, want 403 %q", c.params, err, c.reason)
		}
	}
	c := e.connect(map[string]string{"user": strings.Repeat("u", presence.DefaultMaxKeyLength)})
	c.join("room:x", `{}`)
	if keys := presenceKeys(t, c.nextEvent("presence_state").Payload); len(keys) != 1 {
		t.Fatalf("presence %v", keys)
	}
}

// The conformance channel tracks the keys and metas a client names: the
// tracker's limits answer with a reason, not a crash or a silent drop.
func TestConformancePresenceLimitsAreReplies(t *testing.T) {
	e := newEnv(t, Options{Conformance: true})
	c := e.connect(nil)
	jr, _ := c.join("conformance:limits", `{}`)
	key, _ := json.Marshal(map[string]any{"key": strings.Repeat("k", presence.DefaultMaxKeyLength+1)})
	ref := c.push(jr, "conformance:limits", "track", string(key))
	c.expectReply(ref, "error", `{"reason":"presence key too long"}`)
	big, _ := json.Marshal(map[string]any{"key": "k", "meta": map[string]string{"a": strings.Repeat("m", presence.DefaultMaxMetaSize)}})
	ref = c.push(jr, "conformance:limits", "track", string(big))
	c.expectReply(ref, "error", `{"reason":"presence meta too large"}`)
	for i := range presence.DefaultMaxPerOwner {
		c.push(jr, "conformance:limits", "track", `{"key":"k`+strconv.Itoa(i)+`"}`)
		c.drain() // its presence_diff and its ok reply
	}
	ref = c.push(jr, "conformance:limits", "track", `{"key":"one-more"}`)
	c.expectReply(ref, "error", `{"reason":"too many presence keys"}`)
}

// A token's sub is the user: with a key limit below the token's own bound
// on sub, a longer sub is refused at join like a join parameter.
func TestRoomRefusesTokenSubOverTheLimit(t *testing.T) {
	v, err := auth.NewVerifier(strings.Repeat("s", 32), "")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, Options{Tokens: v, MaxUserLength: 8})
	for sub, ok := range map[string]bool{"ann": true, "a-very-long-sub": false} {
		tok, err := v.Sign(sub, nil, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		c := e.connect(map[string]string{"token": tok})
		if ok {
			joinRoom(t, c, "room:a", "ignored")
		} else {
			c.refusedJoin("room:a", `{}`, `{"reason":"user name too long"}`)
		}
	}
}
