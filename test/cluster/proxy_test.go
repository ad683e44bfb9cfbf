package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// proxyConfig is the nodes' --config: every call goes to the backend
// container (test/images/backend) on the cluster's network.
const proxyConfig = `proxy: {timeout: 3s}
connect: {proxy: "` + harness.BackendURL + `/channels/connect"}
channels:
  - topic: "order:*"
    join: {proxy: "` + harness.BackendURL + `/channels/join"}
    events: {proxy: "` + harness.BackendURL + `/channels/event"}
    leave: {proxy: "` + harness.BackendURL + `/channels/leave"}
`

// TestProxyAcrossNodes runs channels decided by an HTTP backend on two
// nodes (README "Channels for any backend"), the calls signed: the
// backend's connect names each socket, its join answer reaches the
// joiner on either node, a push on one node gets the backend's reply
// there while the broadcast the backend asked for reaches the members on
// both nodes, and the backend's refusals reach the client as its error
// reply and as a refused connection.
func TestProxyAcrossNodes(t *testing.T) {
	const secret = "cluster-proxy-secret"
	cl := harness.Start(t, harness.Options{
		Nodes: 2,
		Files: map[string]string{"/channelsd.yaml": proxyConfig},
		Args:  []string{"--config", "/channelsd.yaml"},
		Env:   map[string]string{"CHANNELS_PROXY_SECRET": secret},
	})
	cl.StartBackend(secret)
	ctx := timeout(t, waitTimeout)
	const topic = "order:7"

	// Node 1: ann owns order 7, and the backend says so in its reply.
	ann := cl.Dial(ctx, 1, map[string]string{"user": "ann"})
	r, err := ann.Join(ctx, topic, nil)
	if err != nil || r.Status != "ok" {
		t.Fatalf("ann's join of %s on node 1: %v %s", topic, err, r)
	}
	jsonEqual(t, "ann's join reply", r.Payload, `{"items":[]}`)
	// Node 2: bob may watch it.
	bob := cl.Dial(ctx, 2, map[string]string{"user": "bob"})
	r, err = bob.Join(ctx, topic, map[string]bool{"watch": true})
	if err != nil || r.Status != "ok" {
		t.Fatalf("bob's join of %s on node 2: %v %s", topic, err, r)
	}
	awaitAPIBroadcast(ctx, t, cl, 1, topic, bob)
	awaitAPIBroadcast(ctx, t, cl, 2, topic, ann)

	// bob's push on node 2: the backend's reply to bob, its broadcast
	// to both nodes.
	ref := push(t, bob, topic, "add_item", map[string]string{"sku": "X1"})
	if m, err := bob.AwaitReply(ctx, ref); err != nil || m.Status != "ok" {
		t.Fatalf("reply to bob's add_item: %v %s", err, m)
	} else {
		jsonEqual(t, "reply to bob's add_item", m.Payload, `{"count":1}`)
	}
	for who, ws := range map[string]*wsclient.Client{"ann on node 1": ann, "bob on node 2": bob} {
		m, err := ws.Await(ctx, wsclient.IsEvent(topic, "item_added"))
		if err != nil {
			t.Fatalf("%s: no item_added: %v", who, err)
		}
		jsonEqual(t, who+"'s item_added", m.Payload, `{"sku":"X1","by":"bob"}`)
	}
	// And the other way: ann's push on node 1 reaches bob on node 2.
	ref = push(t, ann, topic, "add_item", map[string]string{"sku": "X2"})
	if m, err := ann.AwaitReply(ctx, ref); err != nil || m.Status != "ok" {
		t.Fatalf("reply to ann's add_item: %v %s", err, m)
	} else {
		jsonEqual(t, "reply to ann's add_item", m.Payload, `{"count":2}`)
	}
	if m, err := bob.Await(ctx, wsclient.IsEvent(topic, "item_added")); err != nil {
		t.Fatalf("bob on node 2: no item_added from ann: %v", err)
	} else {
		jsonEqual(t, "bob's second item_added", m.Payload, `{"sku":"X2","by":"ann"}`)
	}

	// Refusals: a join of an order that is not bob's, on node 2, and a
	// connection without a user.
	r, err = bob.Join(ctx, "order:9", nil)
	if err != nil || r.Status != "error" {
		t.Fatalf("bob's join of order:9: %v %s", err, r)
	}
	jsonEqual(t, "refusal of order:9", r.Payload, `{"reason":"not your order"}`)
	_, err = wsclient.Dial(ctx, cl.Node(2).WSURL(), wsclient.Options{})
	if he := (*wsclient.HandshakeError)(nil); !errors.As(err, &he) || he.Status != 401 {
		t.Fatalf("connect without a user: %v, want the backend's HTTP 401", err)
	}
}

// awaitAPIBroadcast returns once a broadcast on topic through node's HTTP
// API reaches ws: the subscription of a join on another node is live
// only once its node's Redis SUBSCRIBE is (see awaitSubscribed). It
// probes every 300 ms, within ctx.
func awaitAPIBroadcast(ctx context.Context, t *testing.T, cl *harness.Cluster, node int, topic string, ws *wsclient.Client) {
	t.Helper()
	began := time.Now()
	for {
		if err := cl.Broadcast(ctx, node, topic, "probe", map[string]any{}); err != nil {
			t.Fatalf("probe through node %d: %v", node, err)
		}
		probe, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := ws.Await(probe, wsclient.IsEvent(topic, "probe"))
		cancel()
		if err == nil {
			t.Logf("%s: broadcasts through node %d arrive after %v", topic, node, time.Since(began).Round(time.Millisecond))
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: broadcasts through node %d never arrived: %v", topic, node, err)
		}
	}
}

// jsonEqual fails unless got holds the same JSON value as want.
func jsonEqual(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %q is not JSON: %v", what, got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Fatalf("%s: %s, want %s", what, got, want)
	}
}
