package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/node"
	presenceredis "github.com/channelsd/channelsd/presence/redis"
	"github.com/channelsd/channelsd/pubsub/redis"
	"github.com/channelsd/channelsd/test/redistest"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// drainClusterNode starts a node of a cluster on srv with Redis pub/sub
// and presence, as `channelsd --redis` runs.
func drainClusterNode(t *testing.T, srv *redistest.Server, id string, window time.Duration) *lpNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps, err := redis.New(ctx, redis.Options{URL: srv.URL(), NodeID: id, Prefix: "drain", Logger: testLogger()})
	if err != nil {
		t.Fatalf("redis.New(%s): %v", id, err)
	}
	tracker, err := presenceredis.New(ctx, presenceredis.Options{
		Address: srv.URL(), Prefix: "drain", NodeID: id, PubSub: ps, LocalDispatch: ps.DispatchLocal,
		Heartbeat: 200 * time.Millisecond, Coalesce: 5 * time.Millisecond, Logger: testLogger(),
	})
	if err != nil {
		_ = ps.Close()
		t.Fatalf("presence(%s): %v", id, err)
	}
	tn := startNode(t, func(c *node.Config) { c.PubSub, c.Presence, c.DrainWindow = ps, tracker, window })
	return &lpNode{testNode: tn, url: tn.httpURL + "/socket/longpoll", client: tn.api}
}

// A node of a cluster drains (POST /api/drain, as `channelsd drain` does):
// it turns not-ready, its WebSocket users and its long-poll user are
// disconnected over the window (1012; the long-poll session ends, so its
// next request gets 410), a user on the other node sees every one of them
// leave, and once the node has stopped none of its presence entries is
// left in Redis.
func TestDrainCluster(t *testing.T) {
	srv := redistest.Start(t)
	a := drainClusterNode(t, srv, "a", time.Second)
	b := drainClusterNode(t, srv, "b", 0)
	const topic = "room:drain"

	bob := b.dial(t, v2, "user", "bob")
	bob.join(topic, `{}`)
	bob.awaitState(topic)

	var users []*conn
	want := map[string]bool{}
	for i := range 6 {
		name := fmt.Sprintf("ws%d", i)
		c := a.dial(t, v2, "user", name)
		c.join(topic, `{}`)
		users = append(users, c)
		want[name] = true
	}
	lp := a.lpOpen(t, v2, "user", "lp")
	lp.send(`["1","1","` + topic + `","phx_join",{}]`)
	lp.await(`["1","1","` + topic + `","phx_reply",{"status":"ok","response":{}}]`)
	want["lp"] = true

	// Bob sees them all join (through Redis). His view merges
	// presence_state and presence_diff as the JavaScript Presence class
	// does: a node that detects a gap in another node's diffs sends its
	// clients a fresh presence_state instead.
	view := map[string]bool{"bob": true}
	bob.awaitView(t, topic, view, func() bool {
		for k := range want {
			if !view[k] {
				return false
			}
		}
		return true
	})
	fields := presenceFields(t, srv, "drain:p:"+topic)
	if !hasPrefix(fields, "a/") {
		t.Fatalf("node a's entries are not in Redis: %v", fields)
	}

	if status := a.post(t, "/api/drain", ""); status != http.StatusAccepted {
		t.Fatalf("POST /api/drain: %d", status)
	}
	if st := a.DrainStatus(); !st.Draining {
		t.Fatalf("not draining after POST /api/drain: %+v", st)
	}
	res, err := a.api.Get(a.httpURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a's /readyz while draining: %d", res.StatusCode)
	}

	// Bob sees every user of a leave, bob himself stays.
	bob.awaitView(t, topic, view, func() bool {
		for k := range want {
			if view[k] {
				return false
			}
		}
		return view["bob"] && len(view) == 1
	})
	for _, c := range users {
		c.expectClose(1012)
	}
	// The long-poll session has ended: a POST gets 410 (and phoenix.js
	// reconnects); a GET opening a new session on a draining node gets
	// HTTP 503, so the client goes through the load balancer again.
	if ans := a.request(t, http.MethodPost, lp.query(), `["1","2","`+topic+`","ping",{}]`, nil); ans.Status != 410 {
		t.Errorf("POST on the drained session: %s, want status 410", ans.Raw)
	}
	res, err = a.api.Get(a.url + "?vsn=2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" {
		t.Errorf("opening GET on a draining node: %d (Retry-After %q), want 503", res.StatusCode, res.Header.Get("Retry-After"))
	}
	bob.call(topic, "ping", `{}`, "ok", `{}`)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("a.Shutdown: %v", err)
	}
	if fields := presenceFields(t, srv, "drain:p:"+topic); hasPrefix(fields, "a/") || !hasPrefix(fields, "b/") {
		t.Errorf("Redis presence fields after a stopped: %v, want only b's", fields)
	}
}

// presenceFields lists the fields (node/ref) of a presence hash.
func presenceFields(t *testing.T, srv *redistest.Server, key string) []string {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer c.Close()
	fields, err := c.HKeys(testCtx(t), key).Result()
	if err != nil {
		t.Fatalf("HKEYS %s: %v", key, err)
	}
	return fields
}

func hasPrefix(fields []string, prefix string) bool {
	for _, f := range fields {
		if strings.HasPrefix(f, prefix) {
			return true
		}
	}
	return false
}

// awaitView applies topic's presence_state and presence_diff messages to
// view (the keys present) until done reports true.
func (c *conn) awaitView(t *testing.T, topic string, view map[string]bool, done func() bool) {
	t.Helper()
	for !done() {
		m := c.await("presence_state or presence_diff", func(m wsclient.Message) bool {
			return m.Topic == topic && (m.Event == "presence_state" || m.Event == "presence_diff")
		})
		if m.Event == "presence_state" {
			var st map[string]json.RawMessage
			payloadOf(t, m, &st)
			clear(view)
			for k := range st {
				view[k] = true
			}
			continue
		}
		var d struct {
			Joins  map[string]json.RawMessage `json:"joins"`
			Leaves map[string]json.RawMessage `json:"leaves"`
		}
		payloadOf(t, m, &d)
		for k := range d.Joins {
			view[k] = true
		}
		for k := range d.Leaves {
			delete(view, k)
		}
	}
}
