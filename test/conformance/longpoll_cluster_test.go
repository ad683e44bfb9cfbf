package conformance

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/node"
	presenceredis "github.com/channelsd/channelsd/presence/redis"
	"github.com/channelsd/channelsd/pubsub/redis"
	"github.com/channelsd/channelsd/test/redistest"
	"github.com/channelsd/channelsd/transport"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// startClusterNode starts a node of a cluster on srv, with Redis pub/sub
// and presence, as `channelsd --redis` runs; its long-poll transport is
// the node's own, relaying through the PubSub.
func startClusterNode(t *testing.T, srv *redistest.Server, id string) *lpNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps, err := redis.New(ctx, redis.Options{URL: srv.URL(), NodeID: id, Prefix: "lp40", Logger: testLogger()})
	if err != nil {
		t.Fatalf("redis.New(%s): %v", id, err)
	}
	tracker, err := presenceredis.New(ctx, presenceredis.Options{
		Address: srv.URL(), Prefix: "lp40", NodeID: id, PubSub: ps, LocalDispatch: ps.DispatchLocal,
		Heartbeat: 200 * time.Millisecond, Coalesce: 5 * time.Millisecond, Logger: testLogger(),
	})
	if err != nil {
		_ = ps.Close()
		t.Fatalf("presence(%s): %v", id, err)
	}
	// node.Shutdown closes both.
	tn := startNode(t, func(c *node.Config) { c.PubSub, c.Presence = ps, tracker })
	return &lpNode{testNode: tn, url: tn.httpURL + "/socket/longpoll", client: tn.api}
}

// Item 40: a long-poll session opened on node a is used through a and b
// alternately, every request landing on the other node from the last, as
// behind a round-robin balancer without sticky sessions. It joins a room,
// exchanges messages both ways with a WebSocket user on b, sees that
// user's presence and is seen in theirs. When a goes away, the client's
// next requests through b get what a lost session gets: POST 410, GET a
// new session (410 with a new token) on b, which works.
func TestLongPoll_Item40_AnyNode(t *testing.T) {
	srv := redistest.Start(t)
	a := startClusterNode(t, srv, "a")
	b := startClusterNode(t, srv, "b")
	const topic = "room:lp40"

	bob := b.dial(t, v2, "user", "bob")
	bob.join(topic, `{}`)
	if st := bob.awaitState(topic); len(st["bob"]) != 1 {
		t.Fatalf("bob's presence_state %v", st)
	}

	ann := a.lpOpen(t, v2, "user", "ann")
	ann.via = []*lpNode{b, a} // the opening GET went to a
	ann.send(`["1","1","` + topic + `","phx_join",{}]`)
	ann.await(`["1","1","` + topic + `","phx_reply",{"status":"ok","response":{}}]`)

	// Presence: bob sees ann join (through Redis), ann's state lists bob.
	// (The cluster's diffs carry the origin's src and clock beside joins
	// and leaves, which clients ignore.)
	bob.await("presence_diff with ann joining", func(m wsclient.Message) bool {
		var d struct {
			Joins map[string]json.RawMessage `json:"joins"`
		}
		return m.Topic == topic && m.Event == "presence_diff" && json.Unmarshal(m.Payload, &d) == nil && d.Joins["ann"] != nil
	})
	// ann's list (presence_state merged with the diffs that follow, as
	// the JS Presence class does) comes to hold bob: a remote entry may
	// reach a node's presence_state up to a coalescing window after the
	// track, and then comes as a diff (README, presence limits).
	awaitMessage(t, ann, func(m string) bool {
		return (strings.Contains(m, `"presence_state"`) || strings.Contains(m, `"presence_diff"`)) && strings.Contains(m, `"bob"`)
	})

	// Messages both ways.
	ann.send(`["1","2","` + topic + `","new_msg",{"body":"hi bob"}]`)
	bob.awaitFrame(nil, nil, topic, "new_msg", `{"body":"hi bob","user":"ann"}`)
	bob.push(topic, "new_msg", `{"body":"hi ann"}`)
	ann.await(`[null,null,"` + topic + `","new_msg",{"body":"hi ann","user":"bob"}]`)

	// Every request alternated: count what each node relayed.
	ra := a.lpStats().Relayed.Load()
	rb := b.lpStats().Relayed.Load()
	if ra != 0 || rb == 0 || int(rb) < ann.hops/2 {
		t.Fatalf("relayed by a %d, by b %d, of %d requests: b's share should all have been relayed to a", ra, rb, ann.hops)
	}
	if n := b.lpSessions(); n != 0 {
		t.Fatalf("b holds %d long-poll sessions; the session lives on a only", n)
	}

	// Node a goes away (its session with it).
	shutdownNode(t, a)
	old := ann.token
	if r := b.request(t, http.MethodPost, "vsn=2.0.0&token="+old, `["1","3","`+topic+`","new_msg",{"body":"lost"}]`, nil); r.Raw != `{"status":410}` {
		t.Fatalf("POST after the owner left: %s", r.Raw)
	}
	r := b.request(t, http.MethodGet, "vsn=2.0.0&user=ann&token="+old, "", nil)
	if r.Status != 410 || r.Token == "" || r.Token == old {
		t.Fatalf("GET after the owner left: %s", r.Raw)
	}
	again := &lpClient{n: b, t: t, v: v2, token: r.Token}
	again.send(`["2","2","` + topic + `","phx_join",{}]`)
	again.await(`["2","2","` + topic + `","phx_reply",{"status":"ok","response":{}}]`)
	if n := b.lpSessions(); n != 1 {
		t.Fatalf("b holds %d sessions after the reconnect, want 1", n)
	}
}

// awaitMessage polls until a received message satisfies match.
func awaitMessage(t *testing.T, c *lpClient, match func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	seen := 0
	for time.Now().Before(deadline) {
		for ; seen < len(c.got); seen++ {
			if match(c.got[seen]) {
				return c.got[seen]
			}
		}
		if a := c.poll(); a.Status != 200 && a.Status != 204 {
			t.Fatalf("poll: %s", a.Raw)
		}
	}
	t.Fatalf("no matching message (got %q)", c.got)
	return ""
}

func (n *lpNode) lpStats() *transport.LongPollStats {
	if n.lp != nil {
		return n.lp.Stats()
	}
	return n.LongPollStats()
}

func (n *lpNode) lpSessions() int {
	if n.lp != nil {
		return n.lp.Sessions()
	}
	return int(n.LongPollStats().Open.Load())
}

// shutdownNode stops a node before the end of the test.
func shutdownNode(t *testing.T, n *lpNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
