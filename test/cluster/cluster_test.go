package cluster

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// messages is how many numbered broadcasts the ordering checks publish.
const messages = 200

// TestCluster runs the checks that leave the cluster as they found it on
// one three-node cluster.
func TestCluster(t *testing.T) {
	cl := harness.Start(t, harness.Options{Nodes: 3})
	runChecks(t, cl, fanoutChecks)
}

// check is a subtest run on a cluster that its caller started.
type check struct {
	name string
	run  func(*testing.T, *harness.Cluster)
}

// fanoutChecks leave the cluster as they found them, on distinct topics:
// any number of them share one cluster, whatever its Redis.
var fanoutChecks = []check{
	{"BroadcastFromClientReachesEveryNodeInOrder", testClientBroadcastOrder},
	{"BroadcastFromAPIReachesEveryNodeInOrder", testAPIBroadcastOrder},
	{"BroadcastFromExcludesOnlyTheSender", testBroadcastFrom},
	{"DisconnectByIDClosesThatIDOnEveryNode", testDisconnectByID},
}

// runChecks runs each check as a subtest of t on cl.
func runChecks(t *testing.T, cl *harness.Cluster, checks []check) {
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) { c.run(t, cl.For(t)) })
	}
}

// subscribersFrom joins topic with one client on each node from first on,
// named by their node, and waits until probe's broadcasts reach them all.
func subscribersFrom(ctx context.Context, t *testing.T, cl *harness.Cluster, topic string, first int, probe *wsclient.Client) map[string]*wsclient.Client {
	t.Helper()
	subs := map[string]*wsclient.Client{}
	for i := first; i <= cl.N(); i++ {
		ws := cl.Dial(ctx, i, nil)
		join(ctx, t, ws, topic)
		subs[fmt.Sprintf("subscriber on node %d", i)] = ws
	}
	awaitSubscribed(ctx, t, topic, probe, subs)
	return subs
}

// testClientBroadcastOrder: a client on node 1 broadcasts 200 numbered
// messages; a subscriber on each node, and the sender, get 1..200 once
// each and in order.
func testClientBroadcastOrder(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*waitTimeout)
	const topic = "conformance:order-client"
	pub := cl.Dial(ctx, 1, nil)
	join(ctx, t, pub, topic)
	subs := subscribersFrom(ctx, t, cl, topic, 1, pub)
	subs["the sender (node 1)"] = pub

	refs := make([]string, 0, messages+1)
	for n := 1; n <= messages; n++ {
		refs = append(refs, push(t, pub, topic, "broadcast", numbered{N: n}))
	}
	refs = append(refs, push(t, pub, topic, "broadcast", numbered{End: true}))
	awaitReplies(ctx, t, pub, refs)
	for who, ws := range subs {
		checkSequence(t, who, series(ctx, t, ws, topic, "", "broadcast"), messages)
	}
}

// testAPIBroadcastOrder: 200 numbered POST /api/broadcast on node 1, one
// after the other, reach a subscriber on each node once each and in order.
func testAPIBroadcastOrder(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 3*waitTimeout)
	const topic, event = "conformance:order-api", "api_msg"
	probe := cl.Dial(ctx, 1, nil)
	join(ctx, t, probe, topic)
	subs := subscribersFrom(ctx, t, cl, topic, 1, probe)
	for n := 1; n <= messages; n++ {
		if err := cl.Broadcast(ctx, 1, topic, event, numbered{N: n}); err != nil {
			t.Fatalf("message %d: %v", n, err)
		}
	}
	if err := cl.Broadcast(ctx, 1, topic, event, numbered{End: true}); err != nil {
		t.Fatal(err)
	}
	for who, ws := range subs {
		checkSequence(t, who, series(ctx, t, ws, topic, "", event), messages)
	}
}

// testBroadcastFrom: a shout (broadcast_from) reaches every subscriber but
// its sender: another socket on the sender's node and sockets on the other
// nodes. It runs once with a sender on node 1 and once with one on node 2,
// so that each node both originates and relays a shout.
func testBroadcastFrom(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*waitTimeout)
	const topic = "conformance:shout"
	type sock struct {
		name string
		ws   *wsclient.Client
	}
	var socks []sock
	for _, s := range []struct {
		name string
		node int
	}{{"a (node 1)", 1}, {"b (node 1)", 1}, {"c (node 2)", 2}, {"d (node 3)", 3}} {
		ws := cl.Dial(ctx, s.node, nil)
		join(ctx, t, ws, topic)
		socks = append(socks, sock{s.name, ws})
	}
	awaitSubscribed(ctx, t, topic, socks[0].ws, map[string]*wsclient.Client{"b": socks[1].ws, "c": socks[2].ws, "d": socks[3].ws})
	awaitSubscribed(ctx, t, topic, socks[2].ws, map[string]*wsclient.Client{"a": socks[0].ws})
	for _, sender := range []int{0, 2} { // a on node 1, c on node 2
		from := socks[sender].name
		call(ctx, t, socks[sender].ws, topic, "shout", numbered{N: 1, From: from, Phase: from})
		// The end marker follows the shout from the same socket, so each
		// socket gets the shout, if at all, before the marker.
		call(ctx, t, socks[sender].ws, topic, "broadcast", numbered{End: true, Phase: from})
		for i, s := range socks {
			got := series(ctx, t, s.ws, topic, from, "shout", "broadcast")
			want := 1
			if i == sender {
				want = 0
			}
			if len(got) != want {
				t.Errorf("shout from %s: %s got %d shout(s), want %d: %v", from, s.name, len(got), want, got)
			}
			for _, m := range got {
				if p := decode(t, m); p.From != from {
					t.Errorf("shout from %s: %s got %s", from, s.name, m)
				}
			}
		}
	}
}

// testDisconnectByID: disconnect_id from a client on node 2 closes, with
// code 1001, every socket named victim-1 on nodes 1, 2 (two of them) and
// 3; sockets named otherwise (bystander, victim-10) stay open and served.
func testDisconnectByID(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*waitTimeout)
	const topic = "conformance:disconnect"
	type sock struct {
		name string
		ws   *wsclient.Client
	}
	open := func(id string, node int) sock {
		ws := cl.Dial(ctx, node, map[string]string{"socket_id": id})
		join(ctx, t, ws, topic)
		return sock{fmt.Sprintf("%s on node %d", id, node), ws}
	}
	victims := []sock{open("victim-1", 1), open("victim-1", 2), open("victim-1", 2), open("victim-1", 3)}
	others := []sock{open("bystander", 1), open("victim-10", 2), open("bystander", 3)}
	ctl := cl.Dial(ctx, 2, nil)
	join(ctx, t, ctl, topic)
	others = append(others, sock{"an anonymous socket on node 2", ctl})
	// Each socket subscribed its id's topic when it connected, before it
	// joined; once broadcasts on the joined topic from node 2 reach every
	// node, the id topics' subscriptions are live too.
	all := map[string]*wsclient.Client{}
	for _, s := range append(slices.Clone(victims), others[:len(others)-1]...) {
		all[s.name] = s.ws
	}
	awaitSubscribed(ctx, t, topic, ctl, all)

	call(ctx, t, ctl, topic, "disconnect_id", map[string]string{"id": "victim-1"})
	for _, v := range victims {
		st, err := v.ws.AwaitClose(ctx)
		if err != nil {
			t.Errorf("%s: not closed: %v", v.name, err)
			continue
		}
		if !st.Received || st.Code != 1001 {
			t.Errorf("%s: ended with %s, want a close frame with code 1001", v.name, st)
		}
	}
	// The victims are gone; the others still answer.
	for _, o := range others {
		r, err := o.ws.AwaitReply(ctx, push(t, o.ws, topic, "ping", map[string]string{"still": "here"}))
		if err != nil || r.Status != "ok" {
			t.Errorf("%s: ping after the disconnect: %v %v", o.name, r, err)
		}
	}
}

// TestRedisOutage: Redis stops for 5 s. Meanwhile broadcasts between two
// clients of one node still work and /readyz is 503 on every node (while
// /healthz stays 200). Once Redis is back every node turns ready again and
// cross-node broadcasts work again, in both directions, with no node
// restarted.
func TestRedisOutage(t *testing.T) {
	const outage = 5 * time.Second
	cl := harness.Start(t, harness.Options{Nodes: 2})
	ctx := timeout(t, 3*time.Minute)
	const topic = "conformance:outage"
	a1 := cl.Dial(ctx, 1, nil)
	a2 := cl.Dial(ctx, 1, nil)
	b := cl.Dial(ctx, 2, nil)
	for _, ws := range []*wsclient.Client{a1, a2, b} {
		join(ctx, t, ws, topic)
	}
	awaitSubscribed(ctx, t, topic, a1, map[string]*wsclient.Client{"a2": a2, "b": b})
	awaitSubscribed(ctx, t, topic, b, map[string]*wsclient.Client{"a1": a1})
	awaitPhase := func(who string, ws *wsclient.Client, phase string) {
		t.Helper()
		if _, err := ws.Await(timeout(t, waitTimeout), isPhase(topic, "broadcast", phase)); err != nil {
			t.Fatalf("%s did not get the %q broadcast: %v", who, phase, err)
		}
	}

	call(ctx, t, a1, topic, "broadcast", numbered{Phase: "before"})
	awaitPhase("b (node 2)", b, "before")
	awaitPhase("a2 (node 1)", a2, "before")

	stopped := time.Now()
	cl.StopRedis()
	for i := 1; i <= cl.N(); i++ {
		cl.AwaitReady(i, http.StatusServiceUnavailable, 10*time.Second)
		t.Logf("node %d: /readyz 503 %v after Redis stopped", i, time.Since(stopped).Round(time.Millisecond))
		if code, err := cl.Healthy(ctx, i); err != nil || code != http.StatusOK {
			t.Errorf("node %d: /healthz during the outage: %d %v, want 200", i, code, err)
		}
	}
	// Local delivery does not need Redis. The reply may report that other
	// nodes could have missed the broadcast.
	r, err := a1.AwaitReply(ctx, push(t, a1, topic, "broadcast", numbered{Phase: "during"}))
	if err != nil {
		t.Fatalf("broadcast during the outage: %v", err)
	}
	t.Logf("reply to a broadcast during the outage: %s", r)
	awaitPhase("a2 (node 1)", a2, "during")
	awaitPhase("a1 (node 1, the sender)", a1, "during")

	time.Sleep(time.Until(stopped.Add(outage))) // the outage's length, not a synchronisation
	cl.StartRedis()
	restarted := time.Now()
	for i := 1; i <= cl.N(); i++ {
		cl.AwaitReady(i, http.StatusOK, 30*time.Second)
		t.Logf("node %d: /readyz 200 %v after Redis restarted", i, time.Since(restarted).Round(time.Millisecond))
	}
	ready := time.Now()

	// A node resubscribes after reconnecting, which may lag /readyz a
	// little: probe until one cross-node broadcast arrives (each probe
	// awaits its own message for 500 ms), in both directions, then demand
	// that every later one arrives, in order.
	probe := func(from *wsclient.Client, to *wsclient.Client, dir string) {
		t.Helper()
		for try := 1; ; try++ {
			phase := fmt.Sprintf("probe %s %d", dir, try)
			// The reply may still be an error while the publishing node
			// reconnects; the probe's arrival is what counts.
			r, err := from.AwaitReply(ctx, push(t, from, topic, "broadcast", numbered{Phase: phase}))
			if err != nil {
				t.Fatalf("%s: probe %d: %v", dir, try, err)
			}
			if r.Status != "ok" {
				t.Logf("%s: probe %d answered %s", dir, try, r)
			}
			pctx := timeout(t, 500*time.Millisecond)
			if _, err := to.Await(pctx, isPhase(topic, "broadcast", phase)); err == nil {
				t.Logf("%s: first cross-node broadcast after the restart arrived %v after every /readyz was 200 (probe %d)",
					dir, time.Since(ready).Round(time.Millisecond), try)
				return
			}
			if time.Since(ready) > 10*time.Second {
				t.Fatalf("%s: no cross-node broadcast arrived within 10 s of /readyz turning 200 (%d probes)", dir, try)
			}
		}
	}
	probe(a1, b, "node 1 -> node 2")
	probe(b, a1, "node 2 -> node 1")

	const n = 50
	for _, dir := range []struct {
		name string
		from *wsclient.Client
		to   map[string]*wsclient.Client
	}{
		{"node 1 -> node 2", a1, map[string]*wsclient.Client{"b (node 2)": b}},
		{"node 2 -> node 1", b, map[string]*wsclient.Client{"a1 (node 1)": a1, "a2 (node 1)": a2}},
	} {
		phase := "after " + dir.name
		refs := make([]string, 0, n+1)
		for i := 1; i <= n; i++ {
			refs = append(refs, push(t, dir.from, topic, "broadcast", numbered{N: i, Phase: phase}))
		}
		refs = append(refs, push(t, dir.from, topic, "broadcast", numbered{End: true, Phase: phase}))
		awaitReplies(ctx, t, dir.from, refs)
		for who, to := range dir.to {
			checkSequence(t, dir.name+": "+who, series(ctx, t, to, topic, phase, "broadcast"), n)
		}
	}
}

// TestNodeKilled: a node killed with SIGKILL takes its own sockets down
// (without a close frame); the other nodes stay ready and their clients
// get everything published afterwards, from a client and from the API.
func TestNodeKilled(t *testing.T) { testNodeKilled(t, harness.Start(t, harness.Options{Nodes: 3})) }

// testNodeKilled is TestNodeKilled on a cluster of three nodes, whose
// topic conformance:kill it leaves to it. Node 3 stays dead.
func testNodeKilled(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*time.Minute)
	const topic = "conformance:kill"
	clients := make([]*wsclient.Client, cl.N()+1) // by node
	for i := 1; i <= cl.N(); i++ {
		clients[i] = cl.Dial(ctx, i, nil)
		join(ctx, t, clients[i], topic)
	}
	// Every node is subscribed and delivering before the kill.
	awaitSubscribed(ctx, t, topic, clients[1], map[string]*wsclient.Client{"node 2": clients[2], "node 3": clients[3]})
	awaitSubscribed(ctx, t, topic, clients[2], map[string]*wsclient.Client{"node 1": clients[1]})
	call(ctx, t, clients[1], topic, "broadcast", numbered{N: 1, Phase: "before"})
	call(ctx, t, clients[1], topic, "broadcast", numbered{End: true, Phase: "before"})
	for i := 1; i <= cl.N(); i++ {
		checkSequence(t, fmt.Sprintf("before the kill, node %d's client", i), series(ctx, t, clients[i], topic, "before", "broadcast"), 1)
	}

	cl.Kill(3)
	st, err := clients[3].AwaitClose(ctx)
	if err != nil {
		t.Fatalf("node 3's client outlived its node: %v", err)
	}
	if st.Received {
		t.Errorf("a SIGKILLed node sent a close frame: %s", st)
	}
	for i := 1; i <= 2; i++ {
		if code, err := cl.Ready(ctx, i); err != nil || code != http.StatusOK {
			t.Errorf("node %d: /readyz after node 3's death: %d %v, want 200", i, code, err)
		}
	}

	// From a client on node 1 ...
	refs := make([]string, 0, messages+1)
	for n := 1; n <= messages; n++ {
		refs = append(refs, push(t, clients[1], topic, "broadcast", numbered{N: n}))
	}
	refs = append(refs, push(t, clients[1], topic, "broadcast", numbered{End: true}))
	awaitReplies(ctx, t, clients[1], refs)
	for i := 1; i <= 2; i++ {
		checkSequence(t, fmt.Sprintf("after the kill, node %d's client (client broadcasts)", i), series(ctx, t, clients[i], topic, "", "broadcast"), messages)
	}
	// ... and from the API of node 2.
	for n := 1; n <= messages; n++ {
		if err := cl.Broadcast(ctx, 2, topic, "api_msg", numbered{N: n}); err != nil {
			t.Fatalf("message %d: %v", n, err)
		}
	}
	if err := cl.Broadcast(ctx, 2, topic, "api_msg", numbered{End: true}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		checkSequence(t, fmt.Sprintf("after the kill, node %d's client (API broadcasts)", i), series(ctx, t, clients[i], topic, "", "api_msg"), messages)
	}
}
