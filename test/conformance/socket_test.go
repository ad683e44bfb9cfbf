package conformance

import (
	"testing"
)

// Item 5: a heartbeat is answered on the phoenix topic with join_ref null,
// whether or not a channel is joined.
func TestItem05_Heartbeat(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	c := tn.dial(t, v2)
	c.sendRaw([]byte(`[null,"5","phoenix","heartbeat",{}]`), false)
	c.expect(`[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]`)

	c.send("1", "1", "conformance:lobby", "phx_join", `{}`)
	c.expectFrame("1", "1", "conformance:lobby", "phx_reply", reply("ok", `{"topic":"conformance:lobby"}`))
	c.sendRaw([]byte(`[null,"6","phoenix","heartbeat",{}]`), false)
	c.expect(`[null,"6","phoenix","phx_reply",{"status":"ok","response":{}}]`)
}

// Item 6: V1 heartbeat reply is an object without join_ref.
func TestItem06_HeartbeatV1(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	c := tn.dial(t, v1)
	c.sendRaw([]byte(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"5"}`), false)
	// sameJSON compares whole objects: a join_ref key would not match.
	c.expect(`{"topic":"phoenix","event":"phx_reply","ref":"5","payload":{"status":"ok","response":{}}}`)

	// Also with a join_ref in the heartbeat and a channel joined.
	c.join("conformance:lobby", `{}`)
	c.sendRaw([]byte(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"6","join_ref":"9"}`), false)
	c.expect(`{"topic":"phoenix","event":"phx_reply","ref":"6","payload":{"status":"ok","response":{}}}`)
}

// Item 7: refs keep their JSON type: a number is echoed as a number.
func TestItem07_NumericRefs(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.send(nil, 5, "phoenix", "heartbeat", `{}`)
			c.expectFrame(nil, 5, "phoenix", "phx_reply", reply("ok", `{}`))

			// Numeric join_ref and ref on a channel, and on its phx_close.
			topic := "conformance:numeric"
			c.send(3, 3, topic, "phx_join", `{}`)
			c.expectFrame(3, 3, topic, "phx_reply", reply("ok", `{"topic":"conformance:numeric"}`))
			c.send(3, 4, topic, "ping", `{"n":1}`)
			c.expectFrame(3, 4, topic, "phx_reply", reply("ok", `{"n":1}`))
			c.send(3, 5, topic, "phx_leave", `{}`)
			c.expectFrame(3, 5, topic, "phx_reply", reply("ok", `{}`))
			c.expectFrame(3, 3, topic, "phx_close", `{}`)
		})
	}
}

// Item 10: joining a topic no route matches gets "unmatched topic" with
// join_ref null.
func TestItem10_UnmatchedTopicJoin(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.send("3", "3", "nope:1", "phx_join", `{}`)
			c.expectFrame(nil, "3", "nope:1", "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
			c.quiet()
		})
	}
}

// Item 11: an event on a topic not joined gets "unmatched topic" with
// join_ref null.
func TestItem11_EventOnTopicNotJoined(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.send("9", "10", "room:9", "new_msg", `{}`)
			c.expectFrame(nil, "10", "room:9", "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
			// The same on a topic of the conformance channel, and on one
			// that no route matches.
			c.send("9", "11", "conformance:9", "ping", `{}`)
			c.expectFrame(nil, "11", "conformance:9", "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
			c.send(nil, "12", "nope:9", "ping", `{}`)
			c.expectFrame(nil, "12", "nope:9", "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
		})
	}
}

// Item 12: leaving a topic not joined is answered ok, with the leave's
// join_ref.
func TestItem12_LeaveTopicNotJoined(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.send("9", "11", "room:9", "phx_leave", `{}`)
			c.expectFrame("9", "11", "room:9", "phx_reply", reply("ok", `{}`))
			c.quiet()
		})
	}
}
