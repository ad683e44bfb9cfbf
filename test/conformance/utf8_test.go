package conformance

import (
	"net/http"
	"testing"

	"github.com/channelsd/channelsd/transport"
)

// The reproduction, end to end: a long-poll client pushes a
// payload with invalid UTF-8 into a room where WebSocket clients of both
// versions listen, then the same goes through POST /api/broadcast.
// Relayed, it would reach the browsers in a text frame that is not UTF-8,
// on which they close the connection (RFC 6455 §8.1). The sender gets an
// error reply on its topic; the listeners get nothing and stay connected.
func TestInvalidUTF8NeverRelayed(t *testing.T) {
	t.Parallel()
	n := startLPNode(t, transport.LongPollConfig{})
	var subs []*conn
	for _, v := range bothVersions {
		c := n.dial(t, v)
		c.join("room:utf8", `{"user":"ann"}`)
		c.settle()
		subs = append(subs, c)
	}

	lp := n.lpOpen(t, v2)
	lp.send(`["3","3","room:utf8","phx_join",{"user":"mallory"}]`)
	lp.await(`["3","3","room:utf8","phx_reply",{"status":"ok","response":{}}]`)
	for _, c := range subs {
		// mallory's join reaches them as a presence_diff, which the
		// room's pacing may send after a heartbeat's reply.
		c.awaitJoinOf("room:utf8", "mallory")
		c.settle()
	}
	lp.send("[\"3\",\"4\",\"room:utf8\",\"new_msg\",{\"body\":\"\xff\xfe\"}]")
	lp.await(`["3","4","room:utf8","phx_reply",{"status":"error","response":{"reason":"payload is not valid UTF-8"}}]`)

	if code := n.post(t, "/api/broadcast", "{\"topic\":\"room:utf8\",\"event\":\"new_msg\",\"payload\":{\"body\":\"\xff\xfe\"}}"); code != http.StatusBadRequest {
		t.Fatalf("POST /api/broadcast with invalid UTF-8: status %d, want 400", code)
	}
	for _, c := range subs {
		c.quiet() // nothing arrived, and the connection is up
	}

	// The room still works.
	lp.send(`["3","5","room:utf8","new_msg",{"body":"hi"}]`)
	for _, c := range subs {
		c.awaitFrame(nil, nil, "room:utf8", "new_msg", `{"body":"hi","user":"mallory"}`)
	}
}
