package conformance

import (
	"regexp"
	"testing"

	"github.com/channelsd/channelsd/channels"
)

// The default application's rooms (room:<name>), as package app documents
// them.

// Joining a room replies ok {} first; then the room tracks the joiner
// under its user (a presence_diff) and pushes presence_state.
func TestRoom_JoinThenPresenceState(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			topic := "room:lobby-" + v.name
			c := tn.dial(t, v)
			c.send("1", "1", topic, "phx_join", `{"user":"ann"}`)
			c.expectFrame("1", "1", topic, "phx_reply", reply("ok", `{}`))
			meta := only(t, c.awaitStateFor(topic, "1"), "ann")
			if _, ok := meta["online_at"].(float64); !ok || len(meta) != 2 {
				t.Fatalf("meta %v, want online_at and phx_ref", meta)
			}
			if d := c.awaitDiff(topic); !equalMeta(only(t, d.Joins, "ann"), meta) || len(d.Leaves) != 0 {
				t.Fatalf("own presence_diff %+v, want the join of %v", d, meta)
			}
			c.quiet()
		})
	}
}

func equalMeta(a, b map[string]any) bool { return jsonOf(a) == jsonOf(b) }

// The user comes from the join params, else the connect param user, else
// an anonymous name.
func TestRoom_UserNames(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	const topic = "room:names"
	c := tn.dial(t, v2, "user", "carol")
	c.join(topic, `{}`)
	only(t, c.awaitState(topic), "carol")

	d := tn.dial(t, v2)
	d.join(topic, `{}`)
	st := d.awaitState(topic)
	if len(st) != 2 {
		t.Fatalf("state %v, want carol and an anonymous user", st)
	}
	for key := range st {
		if key != "carol" && !regexp.MustCompile(`^anon-[0-9a-f]{8}$`).MatchString(key) {
			t.Fatalf("anonymous user named %q, want anon-<8 hex digits>", key)
		}
	}
}

// twoInRoom joins ann (V2) and bob (V1) to topic and lets their presence
// traffic pass.
func twoInRoom(t *testing.T, tn *testNode, topic string) (ann, bob *conn) {
	t.Helper()
	ann = tn.dial(t, v2)
	bob = tn.dial(t, v1)
	ann.join(topic, `{"user":"ann"}`)
	ann.awaitState(topic)
	bob.join(topic, `{"user":"bob"}`)
	bob.awaitState(topic)
	// bob's join reaches both as a presence_diff, which the room's pacing
	// may send after bob's presence_state.
	ann.awaitJoinOf(topic, "bob")
	bob.awaitJoinOf(topic, "bob")
	ann.settle()
	bob.settle()
	return ann, bob
}

// awaitJoinOf waits for a presence_diff on topic that joins key.
func (c *conn) awaitJoinOf(topic, key string) {
	c.t.Helper()
	for {
		if d := c.awaitDiff(topic); len(d.Joins[key]) > 0 {
			return
		}
	}
}

// new_msg is broadcast to everyone, the sender included, with the user
// added; the sender gets ok {}.
func TestRoom_NewMsg(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	const topic = "room:chat"
	ann, bob := twoInRoom(t, tn, topic)

	ann.call(topic, "new_msg", `{"body":"hi"}`, "ok", `{}`)
	ann.awaitFrame(nil, nil, topic, "new_msg", `{"body":"hi","user":"ann"}`)
	ann.quiet()
	bob.expectFrame(nil, nil, topic, "new_msg", `{"body":"hi","user":"ann"}`)

	// The body is any JSON value, passed on as sent.
	bob.call(topic, "new_msg", `{"body":{"text":"yo","tags":[1,null]}}`, "ok", `{}`)
	bob.awaitFrame(nil, nil, topic, "new_msg", `{"body":{"text":"yo","tags":[1,null]},"user":"bob"}`)
	ann.expectFrame(nil, nil, topic, "new_msg", `{"body":{"text":"yo","tags":[1,null]},"user":"bob"}`)

	// Without a body.
	ann.call(topic, "new_msg", `{"text":"hi"}`, "error", `{"reason":"invalid payload"}`)
	ann.quiet()
	bob.quiet()
}

// typing is broadcast to everyone but the sender.
func TestRoom_TypingExcludesSender(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	const topic = "room:typing"
	ann, bob := twoInRoom(t, tn, topic)

	ref := bob.push(topic, "typing", `{"typing":true}`)
	bob.expectFrame(nil, ref, topic, "phx_reply", reply("ok", `{}`)) // V1: no join_ref
	bob.quiet()
	ann.expectFrame(nil, nil, topic, "typing", `{"typing":true,"user":"bob"}`)
}

// ping echoes its payload: JSON as JSON, binary as binary.
func TestRoom_Ping(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	const topic = "room:ping"
	c := tn.dial(t, v2, "user", "ann")
	jr := c.join(topic, `{}`)
	c.settle()
	c.call(topic, "ping", `{"a":[1,2,{"b":null}],"s":"é\u0000"}`, "ok", `{"a":[1,2,{"b":null}],"s":"é\u0000"}`)
	ref, err := c.Push(topic, "ping", channels.Binary{0, 1, 2, 0xff})
	if err != nil {
		t.Fatal(err)
	}
	c.expectBinary(cat(1, len(jr), len(ref), len(topic), 2, jr, ref, topic, "ok", 0, 1, 2, 0xff))
}

// Unknown events get error {"reason":"unknown event"}; topics outside
// room:* (and conformance:*) are unmatched.
func TestRoom_UnknownEventAndTopic(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			// A room of its own per version: the other subtest's socket
			// leaving would otherwise send this one a presence_diff.
			room := "room:x-" + v.name
			c := tn.dial(t, v, "user", "ann")
			c.join(room, `{}`)
			c.call(room, "shout", `{}`, "error", `{"reason":"unknown event"}`)
			for _, topic := range []string{"rooms:x", "room", "lobby", ""} {
				c.settle()
				c.send("7", "7", topic, "phx_join", `{}`)
				c.expectFrame(nil, "7", topic, "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
			}
		})
	}
}
