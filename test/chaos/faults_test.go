package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// 1. A node killed with SIGKILL behind the load balancer: the survivors
// stay up and ready, their clients lose nothing published after the
// kill, the killed node's clients see their connection drop (no close
// frame), reconnect through the load balancer within a bound and receive
// the broadcasts published once they have rejoined.
func TestNodeKilled(t *testing.T) {
	r := newRow(t, "node SIGKILL")
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info"})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	ctx := timeout(t, 2*time.Minute)
	l := startLoad(ctx, t, loadOptions{Name: "kill", Clients: 30, Rooms: 3,
		Targets:    []target{{url: lb.WSURL()}},
		PublishURL: func() string { return cl.Node(1).HTTPURL() }, PublishNode: 1})
	time.Sleep(time.Second) // load before the fault
	before := memOf(t, cl, 1, 2, 3)
	onKilled := int(cl.Metric(t, 3, `channelsd_sockets{transport="websocket"}`))

	killed := time.Now()
	cl.Kill(3)
	for i := 1; i <= 2; i++ {
		if code, err := cl.Ready(ctx, i); err != nil || code != http.StatusOK {
			t.Errorf("node %d: /readyz after node 3's death: %d %v, want 200", i, code, err)
		}
	}
	l.awaitConnected(30 * time.Second)
	l.awaitFlowing(l.now(), 20*time.Second)
	time.Sleep(2 * time.Second) // load after the recovery

	var moved, recovered int
	var slowest time.Duration
	for _, c := range l.cs {
		conns := c.rc.Conns()
		dropped := false
		for _, cn := range conns {
			if !cn.Ended.IsZero() && cn.Ended.After(killed) {
				dropped = true
				if cn.Status.Received {
					t.Errorf("%s: a SIGKILLed node sent a close frame: %s", c.user, cn.Status)
				}
			}
		}
		if dropped {
			moved++
			if cur := conns[len(conns)-1]; cur.Ended.IsZero() && cur.Joined.After(killed) {
				recovered++
				slowest = max(slowest, cur.Joined.Sub(killed))
			}
		}
	}
	t.Logf("node 3 held %d sockets; %d clients lost their connection, %d reconnected and rejoined, the last %v after the kill", onKilled, moved, recovered, slowest.Round(time.Millisecond))
	if recovered != moved {
		t.Errorf("%d of node 3's %d clients reconnected", recovered, moved)
	}
	if moved != onKilled || onKilled == 0 {
		t.Errorf("%d clients lost their connection, want node 3's %d (and more than none)", moved, onKilled)
	}
	l.finish()
	tl := l.account(nil)
	after := memOf(t, cl, 1, 2)
	checkMem(t, before, after)
	for i := 1; i <= 2; i++ {
		if code, err := cl.Ready(ctx, i); err != nil || code != http.StatusOK {
			t.Errorf("node %d: /readyz at the end: %d %v, want 200", i, code, err)
		}
	}
	*r = row{Scenario: r.Scenario, NodesUp: readyNodes(cl), Nodes: 3, Recovered: recovered, Clients: moved,
		Owed: tl.owed, Lost: tl.lost, Dup: tl.dup}
	r.memory(before, after)
}

// 2. Redis paused for 10 s (docker pause: no reset, no answers): every
// node's /readyz turns 503 and back to 200 after the unpause; during the
// pause the publishing node's own clients still get its broadcasts;
// afterwards broadcasts cross nodes again. Only broadcasts published on
// node 1 from the pause until every client got one again may be missed,
// and only by clients of the other nodes; none arrives twice.
func TestRedisPaused(t *testing.T) {
	const pause = 10 * time.Second
	r := newRow(t, "Redis paused 10 s")
	// Rooms without history: what is checked below is that a node's own
	// clients keep getting its broadcasts while Redis is away. A topic
	// with history cannot: its positions come from Redis, so its
	// broadcasts are refused during the pause (TestHistoryRecovery in
	// test/cluster covers that case).
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info", Args: []string{"--history=room:*=0"}})
	ctx := timeout(t, 2*time.Minute)
	l := startLoad(ctx, t, loadOptions{Name: "pause", Clients: 30, Rooms: 3,
		Targets:    nodeTargets(cl, 1, 2, 3),
		PublishURL: func() string { return cl.Node(1).HTTPURL() }, PublishNode: 1})
	time.Sleep(time.Second)
	before := memOf(t, cl, 1, 2, 3)

	paused := time.Now()
	cl.PauseRedis()
	// Polled on every node at once: a /readyz takes the node's Redis
	// ping timeout to answer while Redis is paused.
	var wg sync.WaitGroup
	for i := 1; i <= 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(paused) < pause {
				if code, err := cl.Ready(ctx, i); err == nil && code == http.StatusServiceUnavailable {
					t.Logf("node %d: /readyz 503 %v after the pause", i, time.Since(paused).Round(time.Millisecond))
					return
				}
				time.Sleep(100 * time.Millisecond) // polling interval
			}
			t.Errorf("node %d: /readyz did not answer 503 during the %v pause", i, pause)
		}()
	}
	wg.Wait()
	allDown := time.Now()
	time.Sleep(time.Until(paused.Add(pause))) // the pause's length, not a synchronisation
	unpausing := time.Now()
	cl.UnpauseRedis()
	for i := 1; i <= 3; i++ {
		cl.AwaitReady(i, http.StatusOK, 30*time.Second)
		t.Logf("node %d: /readyz 200 %v after the unpause", i, time.Since(unpausing).Round(time.Millisecond))
	}
	l.awaitFlowing(l.now(), 20*time.Second)
	flowing := time.Now()
	t.Logf("every client, on every node, got a broadcast again %v after the unpause", flowing.Sub(unpausing).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	l.finish()

	// Local delivery during the pause: node 1's clients got every
	// broadcast published while every node was not ready.
	l.pmu.Lock()
	local, localMissed := 0, 0
	for _, c := range l.cs {
		if c.node != 1 {
			continue
		}
		for k, p := range l.pubs {
			if k[1] != c.room || p.start.Before(allDown) || p.end.After(unpausing) || (p.code != http.StatusAccepted && p.code != http.StatusServiceUnavailable) {
				continue
			}
			local++
			if c.count(k[0]) == 0 {
				localMissed++
			}
		}
	}
	l.pmu.Unlock()
	t.Logf("during the pause: %d deliveries to node 1's own clients, %d missed", local, localMissed)
	if local == 0 || localMissed > 0 {
		t.Errorf("local broadcasts during the pause: %d owed to node 1's clients, %d missed (want some, none missed)", local, localMissed)
	}
	tl := l.account(func(c *loadClient, p publish) bool {
		return c.node != 1 && overlaps(p, paused, flowing)
	})
	after := memOf(t, cl, 1, 2, 3)
	checkMem(t, before, after)
	*r = row{Scenario: r.Scenario, NodesUp: readyNodes(cl), Nodes: 3, Recovered: l.connected(), Clients: len(l.cs),
		Owed: tl.owed, Lost: tl.lost, Dup: tl.dup}
	r.memory(before, after)
}

// 3. Node 3 cut off from the cluster's network (Redis and the other
// nodes) for 5 s and healed; its clients connect through a side network
// of its own, which the cut leaves alone. Nodes 1 and 2 stay ready and
// their clients lose nothing; node 3 turns not-ready and its users leave
// the other nodes' presence lists; after the heal node 3 is ready, its
// clients (still on their first connection) get broadcasts from node 1
// again, a new client on its published port is served, and every node's
// presence lists equal the clients.
func TestNodePartitioned(t *testing.T) {
	const cut = 5 * time.Second
	r := newRow(t, "node cut off 5 s")
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info",
		Args: []string{"--presence-heartbeat=500ms", "--presence-dead-after=2s"}})
	ctx := timeout(t, 2*time.Minute)
	side := cl.AttachSideNetwork(3)
	l := startLoad(ctx, t, loadOptions{Name: "cut", Clients: 30, Rooms: 3,
		Targets:    append(nodeTargets(cl, 1, 2), target{url: side, node: 3}),
		PublishURL: func() string { return cl.Node(1).HTTPURL() }, PublishNode: 1})
	all, without := presenceModel(l, 0), presenceModel(l, 3)
	awaitPresence(t, cl, []int{1, 2, 3}, all)
	before := memOf(t, cl, 1, 2, 3)

	cutAt := time.Now()
	cl.Disconnect(3)
	side3 := strings.TrimSuffix(strings.Replace(side, "ws://", "http://", 1), "/socket/websocket")
	for {
		if code, err := get(ctx, side3+"/readyz"); err == nil && code == http.StatusServiceUnavailable {
			t.Logf("node 3: /readyz 503 %v after the cut", time.Since(cutAt).Round(time.Millisecond))
			break
		}
		if time.Since(cutAt) > 10*time.Second {
			t.Fatalf("node 3 still ready 10 s after it was cut off")
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	awaitPresence(t, cl, []int{1, 2}, without)
	t.Logf("node 3's users left nodes 1 and 2's lists %v after the cut", time.Since(cutAt).Round(time.Millisecond))
	time.Sleep(time.Until(cutAt.Add(cut))) // the cut's length, not a synchronisation
	for i := 1; i <= 2; i++ {
		if code, err := cl.Ready(ctx, i); err != nil || code != http.StatusOK {
			t.Errorf("node %d: /readyz during the cut: %d %v, want 200", i, code, err)
		}
	}
	healed := time.Now()
	cl.Reconnect(3)
	cl.AwaitReady(3, http.StatusOK, 30*time.Second)
	t.Logf("node 3 ready again %v after the heal", time.Since(healed).Round(time.Millisecond))
	l.awaitFlowing(l.now(), 20*time.Second)
	flowing := time.Now()
	t.Logf("node 3's clients get broadcasts again %v after the heal", flowing.Sub(healed).Round(time.Millisecond))
	awaitPresence(t, cl, []int{1, 2, 3}, all)
	t.Logf("presence converged %v after the heal", time.Since(healed).Round(time.Millisecond))

	// A new client on node 3's published port is served.
	fresh, err := wsclient.Dial(ctx, cl.Node(3).WSURL(), wsclient.Options{})
	if err != nil {
		t.Fatalf("a new client on node 3 after the heal: %v", err)
	}
	defer fresh.Close()
	if m, err := fresh.Join(ctx, "conformance:cut-fresh", nil); err != nil || m.Status != "ok" {
		t.Fatalf("a new client on node 3 after the heal: join: %v %v", m, err)
	}
	for try := 1; ; try++ {
		if err := cl.Broadcast(ctx, 1, "conformance:cut-fresh", "hello", map[string]int{"try": try}); err != nil {
			t.Fatal(err)
		}
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := fresh.Await(pctx, wsclient.IsEvent("conformance:cut-fresh", "hello"))
		cancel()
		if err == nil {
			break
		}
		if try == 20 {
			t.Fatalf("a new client on node 3 got no broadcast from node 1 in 20 tries")
		}
	}
	_ = fresh.Close()

	reconnects := 0
	for _, c := range l.cs {
		if c.node == 3 {
			reconnects += c.rc.Reconnects()
		}
	}
	if reconnects > 0 {
		t.Errorf("node 3's clients reconnected %d times: their sockets should have survived the cut", reconnects)
	}
	time.Sleep(time.Second)
	l.finish()
	tl := l.account(func(c *loadClient, p publish) bool {
		return c.node == 3 && overlaps(p, cutAt, flowing)
	})
	after := memOf(t, cl, 1, 2, 3)
	checkMem(t, before, after)
	*r = row{Scenario: r.Scenario, NodesUp: readyNodes(cl), Nodes: 3, Recovered: l.connected(), Clients: len(l.cs),
		Owed: tl.owed, Lost: tl.lost, Dup: tl.dup}
	r.memory(before, after)
}

// ---- presence ----

// presenceModel is every room's users (one meta each), leaving out the
// clients of node without (0: none).
func presenceModel(l *load, without int) map[string]map[string]int {
	m := map[string]map[string]int{}
	for r := range l.o.Rooms {
		m[l.topic(r)] = map[string]int{}
	}
	for _, c := range l.cs {
		if without == 0 || c.node != without {
			m[l.topic(c.room)][c.user]++
		}
	}
	return m
}

var probeSeq struct {
	sync.Mutex
	n int
}

// presenceOn joins topic on node i as a probe user and returns the metas
// per user of its presence_state, without probes.
func presenceOn(ctx context.Context, cl *harness.Cluster, i int, topic string) (map[string]int, error) {
	probeSeq.Lock()
	probeSeq.n++
	user := fmt.Sprintf("probe-%d", probeSeq.n)
	probeSeq.Unlock()
	ws, err := wsclient.Dial(ctx, cl.Node(i).WSURL(), wsclient.Options{})
	if err != nil {
		return nil, err
	}
	defer ws.Close()
	if m, err := ws.Join(ctx, topic, map[string]string{"user": user}); err != nil || m.Status != "ok" {
		return nil, fmt.Errorf("join %s: %v %v", topic, m, err)
	}
	m, err := ws.Await(ctx, wsclient.IsEvent(topic, "presence_state"))
	if err != nil {
		return nil, err
	}
	var raw map[string]struct {
		Metas []json.RawMessage `json:"metas"`
	}
	if err := json.Unmarshal(m.Payload, &raw); err != nil {
		return nil, err
	}
	out := map[string]int{}
	for k, e := range raw {
		if !strings.HasPrefix(k, "probe-") {
			out[k] = len(e.Metas)
		}
	}
	return out, nil
}

// awaitPresence waits (20 s at most) until every node's lists equal want.
func awaitPresence(t testing.TB, cl *harness.Cluster, nodes []int, want map[string]map[string]int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		diff := ""
		for _, i := range nodes {
			for topic, users := range want {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				got, err := presenceOn(ctx, cl, i, topic)
				cancel()
				if err != nil {
					diff += fmt.Sprintf("node %d %s: %v; ", i, topic, err)
					continue
				}
				if d := mismatch(users, got); d != "" {
					diff += fmt.Sprintf("node %d %s:%s ", i, topic, d)
				}
			}
		}
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence on nodes %v still differs after 20 s: %s", nodes, diff)
		}
		time.Sleep(200 * time.Millisecond) // polling interval
	}
}

func mismatch(want, got map[string]int) string {
	var b strings.Builder
	for k, n := range want {
		if got[k] != n {
			fmt.Fprintf(&b, " %s: %d metas, want %d;", k, got[k], n)
		}
	}
	for k, n := range got {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, " %s: %d metas, want none;", k, n)
		}
	}
	return b.String()
}

func get(ctx context.Context, url string) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}
