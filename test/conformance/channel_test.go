package conformance

import (
	"encoding/json"
	"sync"
	"testing"

	"github.com/channelsd/channelsd/transport/wsclient"
)

const lobby = "conformance:lobby"

// joinReply is the conformance channel's join reply payload for topic.
func joinReply(topic string) string {
	return reply("ok", `{"topic":`+jsonOf(topic)+`}`)
}

// joinRaw joins topic with join_ref and ref jr and asserts the reply.
func (c *conn) joinRaw(jr any, topic, params string) {
	c.t.Helper()
	c.send(jr, jr, topic, "phx_join", params)
	c.expectFrame(jr, jr, topic, "phx_reply", joinReply(topic))
}

// Item 8: an accepted join is answered with join_ref and ref echoed, and
// the reply comes before any push or broadcast of the new join.
func TestItem08_JoinReplyFirst(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			topic := "conformance:join-" + v.name
			// Another socket keeps broadcasting on the topic while we join.
			b := tn.dial(t, v2)
			b.join(topic, `{}`)
			b.call(topic, "broadcast", `{"n":-1}`, "ok", `{}`)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 400; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := b.Push(topic, "broadcast", map[string]int{"n": i}); err != nil {
						return
					}
				}
			}()
			defer func() { close(stop); wg.Wait() }()

			c := tn.dial(t, v)
			// With a user, the join also pushes presence_state and makes
			// a presence_diff; both must follow the reply.
			c.send("3", "3", topic, "phx_join", `{"user":"ann"}`)
			c.expectFrame("3", "3", topic, "phx_reply", joinReply(topic))
			c.await("presence_state", wsclient.IsEvent(topic, "presence_state"))
		})
	}
}

// Item 9: a refused join answers error with the reason, and the topic
// stays unjoined.
func TestItem09_JoinRefused(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			topic := "conformance:forbidden"
			c.send("3", "3", topic, "phx_join", `{}`)
			c.expectFrame("3", "3", topic, "phx_reply", reply("error", `{"reason":"unauthorized"}`))
			c.send("3", "4", topic, "x", `{}`)
			c.expectFrame(nil, "4", topic, "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
		})
	}
}

// Item 13: leaving answers ok, then phx_close with the join's refs.
func TestItem13_Leave(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.joinRaw("3", lobby, `{}`)
			c.send("3", "12", lobby, "phx_leave", `{}`)
			c.expectFrame("3", "12", lobby, "phx_reply", reply("ok", `{}`))
			c.expectFrame("3", "3", lobby, "phx_close", `{}`)
			c.quiet()
			// The channel is gone.
			c.send("3", "13", lobby, "ping", `{}`)
			c.expectFrame(nil, "13", lobby, "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
		})
	}
}

// Item 14: a second join of a live topic answers the new join, then closes
// the old instance with its own join_ref; the new instance works.
func TestItem14_DuplicateJoin(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.joinRaw("3", lobby, `{}`)
			c.send("8", "8", lobby, "phx_join", `{}`)
			c.expectFrame("8", "8", lobby, "phx_reply", joinReply(lobby))
			c.expectFrame("3", "3", lobby, "phx_close", `{}`)
			c.send("8", "9", lobby, "ping", `{"x":1}`)
			c.expectFrame("8", "9", lobby, "phx_reply", reply("ok", `{"x":1}`))
		})
	}
}

// Item 15: a message with a stale join_ref on a joined topic produces no
// frame (a leave with a stale join_ref neither).
func TestItem15_StaleJoinRef(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.joinRaw("3", lobby, `{}`)
			c.joinRaw("8", lobby, `{}`)
			c.expectFrame("3", "3", lobby, "phx_close", `{}`)
			c.send("3", "10", lobby, "ping", `{}`)
			c.send("3", "11", lobby, "phx_leave", `{}`)
			c.quiet()
			// The live instance was not left.
			c.send("8", "12", lobby, "ping", `{}`)
			c.expectFrame("8", "12", lobby, "phx_reply", reply("ok", `{}`))
		})
	}
}

// Item 16: a message with join_ref null reaches the channel; the reply
// carries the channel's join_ref.
func TestItem16_NullJoinRef(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.joinRaw("3", lobby, `{}`)
			c.send(nil, "4", lobby, "ping", `{"n":1}`)
			c.expectFrame("3", "4", lobby, "phx_reply", reply("ok", `{"n":1}`))
		})
	}
}

// Item 17: a crashing handler gives phx_error with the channel's refs and
// no reply; the socket and its other channels stay up.
func TestItem17_Crash(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			a, b := "conformance:a", "conformance:b"
			c.joinRaw("3", a, `{}`)
			c.joinRaw("5", b, `{}`)
			c.send("3", "4", a, "crash", `{}`)
			c.expectFrame("3", "3", a, "phx_error", `{"reason":"channel_crash"}`)
			c.quiet() // no reply to "4"
			c.send("5", "6", b, "ping", `{"still":"up"}`)
			c.expectFrame("5", "6", b, "phx_reply", reply("ok", `{"still":"up"}`))
			c.send("3", "7", a, "ping", `{}`)
			c.expectFrame(nil, "7", a, "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
			// The client rejoins.
			c.joinRaw("8", a, `{}`)
			c.send("8", "9", a, "ping", `{}`)
			c.expectFrame("8", "9", a, "phx_reply", reply("ok", `{}`))
		})
	}
}

// Item 18: stopping normally sends phx_close; with a reply, the reply
// comes first.
func TestItem18_Stop(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.joinRaw("3", lobby, `{}`)
			c.send("3", "4", lobby, "stop", `{}`)
			c.expectFrame("3", "3", lobby, "phx_close", `{}`)
			c.quiet()

			c.joinRaw("5", lobby, `{}`)
			c.send("5", "6", lobby, "stop_reply", `{}`)
			c.expectFrame("5", "6", lobby, "phx_reply", reply("ok", `{}`))
			c.expectFrame("5", "5", lobby, "phx_close", `{}`)
			c.quiet()
		})
	}
}

// Item 19: ok without data is {"status":"ok","response":{}}, error with
// data carries it, noreply sends nothing.
func TestItem19_ReplyShapes(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.joinRaw("3", lobby, `{}`)
			c.send("3", "4", lobby, "ping", `{}`)
			c.expectFrame("3", "4", lobby, "phx_reply", reply("ok", `{}`))
			c.send("3", "5", lobby, "fail", `{"msg":"bad"}`)
			c.expectFrame("3", "5", lobby, "phx_reply", reply("error", `{"msg":"bad"}`))
			c.send("3", "6", lobby, "noreply", `{}`)
			c.quiet()
			// A reply made later, from another goroutine.
			c.send("3", "7", lobby, "async_reply", `{"later":true}`)
			c.expectFrame("3", "7", lobby, "phx_reply", reply("ok", `{"later":true}`))
			// Unknown events.
			c.send("3", "8", lobby, "no_such_event", `{}`)
			c.expectFrame("3", "8", lobby, "phx_reply", reply("error", `{"reason":"unknown event"}`))
		})
	}
}

// Item 20: a channel push carries the join_ref and a null ref.
func TestItem20_Push(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.joinRaw("3", lobby, `{}`)
			c.send("3", "4", lobby, "push", `{"event":"notice","payload":{"text":"welcome"}}`)
			c.expectFrame("3", nil, lobby, "notice", `{"text":"welcome"}`)
			c.expectFrame("3", "4", lobby, "phx_reply", reply("ok", `{}`))
		})
	}
}

// Item 21: a broadcast reaches every subscribed socket as
// [null,null,topic,event,payload], V1 sockets as an object with ref null.
func TestItem21_Broadcast(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	a := tn.dial(t, v2)
	b := tn.dial(t, v2)
	c := tn.dial(t, v1)
	other := tn.dial(t, v2) // subscribed to another topic
	for _, x := range []*conn{a, b, c} {
		x.join(lobby, `{}`)
	}
	other.join("conformance:other", `{}`)

	// From a channel, the sender included.
	a.call(lobby, "broadcast", `{"body":"hi"}`, "ok", `{}`)
	a.awaitFrame(nil, nil, lobby, "broadcast", `{"body":"hi"}`)
	b.expectFrame(nil, nil, lobby, "broadcast", `{"body":"hi"}`)
	c.expectFrame(nil, nil, lobby, "broadcast", `{"body":"hi"}`)
	a.quiet()

	// From outside any channel, through the HTTP API.
	tn.apiBroadcast(t, lobby, "news", `{"k":"v"}`)
	for _, x := range []*conn{a, b, c} {
		x.expectFrame(nil, nil, lobby, "news", `{"k":"v"}`)
	}
	other.quiet()
}

// Item 22: broadcast_from reaches every subscriber but the sending
// channel instance; another socket of the same user still gets it.
func TestItem22_BroadcastFrom(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			topic := "conformance:shout-" + v.name
			sender := tn.dial(t, v, "user", "ann")
			sameUser := tn.dial(t, v, "user", "ann")
			other := tn.dial(t, v, "user", "bob")
			sender.joinRaw("3", topic, `{}`)
			sameUser.joinRaw("3", topic, `{}`)
			other.joinRaw("3", topic, `{}`)

			sender.send("3", "4", topic, "shout", `{"n":1}`)
			// Anything for the sender would come before its reply.
			sender.expectFrame("3", "4", topic, "phx_reply", reply("ok", `{}`))
			sender.quiet()
			sameUser.expectFrame(nil, nil, topic, "shout", `{"n":1}`)
			other.expectFrame(nil, nil, topic, "shout", `{"n":1}`)
		})
	}
}

// Item 23: an intercepted event reaches each subscriber only through its
// HandleOut, as a push with that subscriber's join_ref.
func TestItem23_Intercept(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	a := tn.dial(t, v2)
	b := tn.dial(t, v2)
	c := tn.dial(t, v1)
	d := tn.dial(t, v1)
	a.joinRaw("3", lobby, `{}`)
	b.joinRaw("7", lobby, `{}`)
	c.joinRaw("11", lobby, `{}`)
	d.send(nil, "1", lobby, "phx_join", `{}`) // a V1 join without join_ref
	d.expectFrame(nil, "1", lobby, "phx_reply", joinReply(lobby))

	check := func(payload string) {
		t.Helper()
		var p map[string]any
		if err := json.Unmarshal([]byte(payload), &p); err != nil {
			t.Fatal(err)
		}
		with := func(jr any) string {
			p["join_ref"] = jr
			return jsonOf(p)
		}
		a.awaitFrame("3", nil, lobby, "intercepted", with("3"))
		b.awaitFrame("7", nil, lobby, "intercepted", with("7"))
		c.awaitFrame("11", nil, lobby, "intercepted", with("11"))
		d.awaitFrame(nil, nil, lobby, "intercepted", with(nil))
	}
	// Broadcast from a channel.
	a.call(lobby, "intercepted", `{"n":1}`, "ok", `{}`)
	check(`{"n":1}`)
	// And from outside, through the HTTP API.
	tn.apiBroadcast(t, lobby, "intercepted", `{"n":2}`)
	check(`{"n":2}`)
	for _, x := range []*conn{a, b, c, d} {
		x.quiet()
	}
}
