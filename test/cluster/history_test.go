package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Recovery after each way a client can miss broadcasts, on one cluster of
// two nodes behind the load balancer, rooms keeping history: positions
// the server cannot serve, a connection frozen by the network, a slow
// consumer closed by its node, a long-poll session across its node's
// drain, and Redis restarted empty. Each subtest logs its counts in one
// line.
func TestHistoryRecovery(t *testing.T) {
	const drainWindow = 2 * time.Second
	cl := harness.Start(t, harness.Options{Nodes: 2, LogLevel: "info",
		Env: map[string]string{"CHANNELS_DRAIN_WINDOW": drainWindow.String()},
		// The slow consumer's topic is a conformance one, whose history
		// no route of the application's sizes: its replay is hundreds of
		// broadcasts.
		Args: []string{historyRule + ";conformance:hist-*=2000,5m", "--report-interval=500ms"},
	})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	awaitPositions(t, cl, 1, 2)

	t.Run("PositionsThatCannotBeServed", func(t *testing.T) { testUnservablePositions(t, cl.For(t)) })
	t.Run("NetworkCut", func(t *testing.T) { testNetworkCut(t, cl.For(t)) })
	t.Run("SlowConsumer", func(t *testing.T) { testSlowConsumerRecovers(t, cl.For(t)) })
	t.Run("LongPollAcrossDrain", func(t *testing.T) { testLongPollAcrossDrain(t, cl.For(t), lb) })
	// Last: it empties Redis.
	t.Run("RedisRestartedEmpty", func(t *testing.T) { testRedisRestartedEmpty(t, cl.For(t)) })
}

// joinOutcome is a join reply's history fields.
type joinOutcome struct {
	Position  string `json:"position"`
	Recovered *bool  `json:"recovered"`
	Reason    string `json:"reason"`
}

func outcomeOf(t testing.TB, m wsclient.Message) joinOutcome {
	t.Helper()
	var o joinOutcome
	if err := json.Unmarshal(m.Payload, &o); err != nil {
		t.Fatalf("join reply %s: %v", m, err)
	}
	return o
}

// publishOne posts one numbered broadcast through p and returns its
// acknowledgement, failing the test unless it is acknowledged with a
// position.
func publishOne(ctx context.Context, t testing.TB, p *publisher, topic string, n int) ack {
	t.Helper()
	a, ok, _ := p.post(ctx, topic, n)
	if !ok {
		t.Fatalf("publish %s %d to %s was not acknowledged", p.name, n, topic)
	}
	if _, err := pubsub.ParsePosition(a.Pos); err != nil {
		t.Fatalf("publish %s %d to %s: the API answered no position (%q): %v", p.name, n, topic, a.Pos, err)
	}
	return a
}

// (e) Joins with positions the server cannot serve: malformed, ahead of
// the history, of another epoch. Each gets an ok reply with recovered
// false, its reason and the current position, and no replay: the first
// broadcast after the join is the next one published. The node stays
// ready, and a join with a good position then recovers what followed it.
func testUnservablePositions(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, time.Minute)
	const topic = "room:positions"
	p := newPublisher("E", func() string { return cl.Node(2).HTTPURL() }, []string{topic}, 0)
	defer p.hc.CloseIdleConnections()
	var acks []ack
	for n := 1; n <= 3; n++ {
		acks = append(acks, publishOne(ctx, t, p, topic, n))
	}
	top, _ := pubsub.ParsePosition(acks[2].Pos)
	foreign := "zz9foreign"
	if top.Epoch == foreign {
		foreign = "zz9other"
	}
	cases := []struct{ since, reason string }{
		{"x", "invalid position"},
		{top.Epoch + ":999999", "position ahead"},
		{foreign + ":2", "epoch changed"},
	}
	n := 3
	for _, c := range cases {
		ws := cl.Dial(ctx, 1, nil)
		r, err := ws.Join(ctx, topic, map[string]string{"since": c.since})
		if err != nil || r.Status != "ok" {
			t.Fatalf("join with since %q: %v %v", c.since, r, err)
		}
		o := outcomeOf(t, r)
		if o.Recovered == nil || *o.Recovered || o.Reason != c.reason {
			t.Errorf("join with since %q: reply %s, want recovered false, reason %q", c.since, r.Payload, c.reason)
		}
		// The newest position: the last broadcast's or, when presence
		// diffs of the room take positions too, a later one.
		if pos, err := pubsub.ParsePosition(o.Position); err != nil || pos.Epoch != top.Epoch || pos.Offset < mustPosition(t, acks[len(acks)-1].Pos).Offset {
			t.Errorf("join with since %q: position %q, want the newest, at least %q", c.since, o.Position, acks[len(acks)-1].Pos)
		}
		n++
		a := publishOne(ctx, t, p, topic, n)
		acks = append(acks, a)
		m, err := ws.Await(ctx, wsclient.IsEvent(topic, tickEvent))
		if err != nil {
			t.Fatalf("join with since %q: no broadcast after it: %v", c.since, err)
		}
		var got tick
		_ = json.Unmarshal(m.Payload, &got)
		if got.N != n || m.Ref.Text() != a.Pos {
			t.Errorf("join with since %q: first broadcast %s, want number %d at %s (nothing replayed)", c.since, m, n, a.Pos)
		}
	}
	if code, err := cl.Ready(ctx, 1); err != nil || code != http.StatusOK {
		t.Errorf("node 1 /readyz after the bad positions: %d %v", code, err)
	}
	// A good position: everything after it, in order, at its positions.
	ws := cl.Dial(ctx, 1, nil)
	r, err := ws.Join(ctx, topic, map[string]string{"since": acks[0].Pos})
	if err != nil || r.Status != "ok" {
		t.Fatalf("join with since %q: %v %v", acks[0].Pos, r, err)
	}
	if o := outcomeOf(t, r); o.Recovered == nil || !*o.Recovered {
		t.Errorf("join with a good since %q: reply %s, want recovered true", acks[0].Pos, r.Payload)
	}
	replayed := 0
	for _, a := range acks[1:] {
		m, err := ws.Await(ctx, wsclient.IsEvent(topic, tickEvent))
		if err != nil {
			t.Fatalf("replay after %s: %v", acks[0].Pos, err)
		}
		if m.Ref.Text() != a.Pos {
			t.Errorf("replay after %s: %s, want the broadcast at %s", acks[0].Pos, m, a.Pos)
		}
		replayed++
	}
	t.Logf("TestHistoryRecovery/PositionsThatCannotBeServed: %d bad positions answered recovered false with their reason and no replay; a good position then replayed %d of %d", len(cases), replayed, len(acks)-1)
}

// (a) A connection the network freezes for 5 s (a proxy in the test
// process stops forwarding, closing nothing), then cut: the client
// reconnects, rejoins with since and gets everything, once.
func testNetworkCut(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*time.Minute)
	const topic = "room:cut"
	px := startFreezer(t, cl.Node(1).Addr())
	rec := newRecoverer(topic, "cut")
	rc := dialRecovering(ctx, t, px.WSURL(), rec, wsclient.Options{})
	p := newPublisher("N", func() string { return cl.Node(2).HTTPURL() }, []string{topic}, 50*time.Millisecond).start(ctx)
	defer p.finish()
	awaitReceived(t, rec, 10, 20*time.Second)

	px.Freeze()
	frozeAt := p.lastAcked()
	time.Sleep(5 * time.Second) // the fault's duration
	missedWhileFrozen := p.lastAcked() - frozeAt
	px.Cut()
	awaitReconnected(t, rc, 1, 20*time.Second)
	time.Sleep(time.Second) // publishing after the recovery, not a synchronisation
	last := p.finish()
	awaitCaughtUp(t, []*recoverer{rec}, []*publisher{p}, 30*time.Second)
	tl := account([]*recoverer{rec}, []*publisher{p})
	t.Logf("TestHistoryRecovery/NetworkCut: frozen 5 s (%d broadcasts acknowledged meanwhile), %d reconnects; %d published; %s",
		missedWhileFrozen, rc.Reconnects(), last, tl)
	checkRecovered(t, tl)
}

// (b) A client that stops reading (connected on a side network with a
// 4 KiB receive buffer, so no proxy buffers for it) in a room of 16 KiB
// broadcasts: its node closes it as a slow consumer; it reconnects,
// rejoins with since and gets everything, once.
func testSlowConsumerRecovers(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*time.Minute)
	const topic = "conformance:hist-slow"
	side := cl.AttachSideNetwork(1)
	rec := newRecoverer(topic, "slow")
	// While stalled is set the client's goroutine waits on it after each
	// message, so the client stops reading (its queue holds 16).
	var gate sync.Mutex
	var stalled chan struct{} // guarded by gate
	onMessage := func(m wsclient.Message) {
		rec.onMessage(m)
		gate.Lock()
		ch := stalled
		gate.Unlock()
		if ch != nil {
			<-ch
		}
	}
	resume := func() {
		gate.Lock()
		defer gate.Unlock()
		if stalled != nil {
			close(stalled)
			stalled = nil
		}
	}
	rc, err := wsclient.DialReconnecting(ctx, side, wsclient.ReconnectOptions{
		Options:     wsclient.Options{Params: map[string]string{"user": rec.user}, Buffer: 16, NetDial: smallReceiveBuffer},
		OnMessage:   onMessage,
		OnJoinReply: func(_ string, conn int, m wsclient.Message) { rec.onJoinReply(conn, m) },
	}, topic, rec.params)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	p := newPublisher("S", func() string { return cl.Node(2).HTTPURL() }, []string{topic}, 20*time.Millisecond)
	p.pad = 16 << 10
	p.start(ctx)
	defer p.finish()
	awaitReceived(t, rec, 20, 20*time.Second)

	before := cl.Metric(t, 1, "channelsd_slow_consumer_disconnects_total")
	gate.Lock()
	stalled = make(chan struct{})
	gate.Unlock()
	defer resume()
	stalledAt := time.Now()
	// Its queue full, node 1 closes it as a slow consumer; a flush stuck
	// past the write timeout drops it uncounted. Either way node 1 ends up
	// without WebSockets (the other subtests' clients are closed).
	how := "slow consumer"
	for cl.Metric(t, 1, "channelsd_slow_consumer_disconnects_total") <= before {
		if socketsPerNode(ctx, t, cl, 1)[1] == 0 {
			how = "dropped (write timeout)"
			break
		}
		if time.Since(stalledAt) > 45*time.Second {
			t.Fatal("node 1 did not close the client that stopped reading within 45 s")
		}
		time.Sleep(250 * time.Millisecond) // polling the node's metrics
	}
	gaveUp := time.Since(stalledAt)
	resume()
	closedAt := cl.Metric(t, 1, "channelsd_slow_consumer_disconnects_total")
	deadline := time.Now().Add(30 * time.Second)
	for rc.Reconnects() < 1 || !rc.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("the client did not rejoin within 30 s of its close (%s): node 1 closed %v more slow consumers meanwhile; connections %+v",
				how, cl.Metric(t, 1, "channelsd_slow_consumer_disconnects_total")-closedAt, rc.Conns())
		}
		time.Sleep(20 * time.Millisecond) // polling the client's state
	}
	time.Sleep(time.Second) // publishing after the recovery, not a synchronisation
	last := p.finish()
	awaitCaughtUp(t, []*recoverer{rec}, []*publisher{p}, 45*time.Second)
	tl := account([]*recoverer{rec}, []*publisher{p})
	t.Logf("TestHistoryRecovery/SlowConsumer: node 1 closed the stalled client (%s) after %v (first connection: %s), %d reconnects; %d published (16 KiB each); %s",
		how, gaveUp.Round(100*time.Millisecond), rc.Conns()[0].Status, rc.Reconnects(), last, tl)
	checkRecovered(t, tl)
}

// (c) A long-poll client through the load balancer; its session's node is
// drained and replaced. The client opens a new session (on the other
// node), rejoins with since and gets everything, once.
func testLongPollAcrossDrain(t *testing.T, cl *harness.Cluster, lb *harness.LoadBalancer) {
	ctx := timeout(t, 2*time.Minute)
	const topic = "room:lp"
	rec := newRecoverer(topic, "lp")
	lp := openLP(ctx, t, lb.LongPollURL(), lpclient.Options{Reconnect: true, Observe: rec.observe(func() int { return -1 })})
	if r, err := lp.Join(ctx, topic, rec.params); err != nil || r.Status != "ok" {
		t.Fatalf("long-poll join: %v %v", r, err)
	}
	// Take what the client queues, so that it keeps polling.
	go func() {
		for {
			if _, err := lp.Next(context.Background()); err != nil {
				return
			}
		}
	}()
	owner := ownerOf(t, lp)
	other := 3 - owner
	p := newPublisher("L", func() string { return cl.Node(other).HTTPURL() }, []string{topic}, 50*time.Millisecond).start(ctx)
	defer p.finish()
	awaitReceived(t, rec, 10, 20*time.Second)

	r := cl.ReplaceNode(owner, 30*time.Second)
	lb.AwaitServer(owner, "UP", 30*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for lp.Reconnects() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the long-poll client never opened a new session after %s was replaced (losses %v)", r.ID, lp.Losses())
		}
		time.Sleep(50 * time.Millisecond) // polling the client's state
	}
	time.Sleep(2 * time.Second) // publishing after the recovery, not a synchronisation
	last := p.finish()
	awaitCaughtUp(t, []*recoverer{rec}, []*publisher{p}, 30*time.Second)
	tl := account([]*recoverer{rec}, []*publisher{p})
	t.Logf("%s: session on node%d, drained and replaced by %s in %v; %d new sessions (losses %v); %d published; %s", t.Name(),
		owner, cl.Node(owner).ID, r.Stopping.Round(100*time.Millisecond), lp.Reconnects(), lp.Losses(), last, tl)
	checkRecovered(t, tl)
}

// (d) Redis restarted empty while clients on both nodes follow a room:
// the history and its epoch are gone. Every client must learn it: a
// rejoin answered recovered false, "history unavailable" while Redis was
// away or "epoch changed" once it was back; never see a hole in
// positions; and get every broadcast acknowledged after its new starting
// point. Whatever was acknowledged before and not received must be
// covered by such an answer. A join after the restart with a position
// from before it is answered "epoch changed", with a position in the new
// epoch.
func testRedisRestartedEmpty(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*time.Minute)
	const topic = "room:redis"
	var recs []*recoverer
	var rcs []*wsclient.Reconnecting
	for i := range 4 {
		rec := newRecoverer(topic, "r"+strconv.Itoa(i))
		recs = append(recs, rec)
		rcs = append(rcs, dialRecovering(ctx, t, cl.Node(1+i%2).WSURL(), rec, wsclient.Options{}))
	}
	p := newPublisher("R", func() string { return cl.Node(1).HTTPURL() }, []string{topic}, 50*time.Millisecond).start(ctx)
	defer p.finish()
	for _, rec := range recs {
		awaitReceived(t, rec, 5, 20*time.Second)
	}
	beforeAck := p.ackFor(p.lastAcked())
	before := mustPosition(t, beforeAck.Pos)

	stopped := time.Now()
	cl.StopRedis()
	time.Sleep(2 * time.Second) // the outage
	cl.StartRedis()
	restarted := time.Now()
	// Every client learns that its history is gone.
	deadline := time.Now().Add(30 * time.Second)
	reasons := map[string]int{}
	for _, rec := range recs {
		for {
			joins, _, errs, _, _ := rec.snapshot()
			learned := ""
			for _, j := range joins {
				if j.At.After(stopped) && j.Recovered != nil && !*j.Recovered && (j.Reason == "epoch changed" || j.Reason == "history unavailable") {
					learned = j.Reason
				}
			}
			if learned != "" {
				reasons[learned]++
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s was never told its history was lost (phx_error %d; joins %s)", rec.user, errs, describeJoins(joins))
			}
			time.Sleep(50 * time.Millisecond) // polling what the client's goroutine records
		}
	}
	learnedIn := time.Since(stopped)
	// The new epoch is live again: a broadcast acknowledged after the
	// restart.
	for p.ackFor(p.lastAcked()).Start.Before(restarted) {
		if time.Now().After(deadline) {
			t.Fatal("no broadcast acknowledged after Redis came back")
		}
		time.Sleep(50 * time.Millisecond) // polling the publisher's ledger
	}
	time.Sleep(time.Second) // publishing in the new epoch, not a synchronisation
	// A join with a position from before the restart.
	ws := cl.Dial(ctx, 2, nil)
	r, err := ws.Join(ctx, topic, map[string]string{"since": beforeAck.Pos})
	if err != nil || r.Status != "ok" {
		t.Fatalf("join with since %q: %v %v", beforeAck.Pos, r, err)
	}
	o := outcomeOf(t, r)
	if o.Recovered == nil || *o.Recovered || o.Reason != "epoch changed" {
		t.Errorf("join with the old epoch's %q after the restart: %s, want recovered false, \"epoch changed\"", beforeAck.Pos, r.Payload)
	}
	if pos, err := pubsub.ParsePosition(o.Position); err != nil || pos.Epoch == before.Epoch {
		t.Errorf("join with the old epoch's %q after the restart: position %q, want one of the new epoch", beforeAck.Pos, o.Position)
	}
	last := p.finish()
	after := mustPosition(t, p.ackFor(last).Pos)
	if after.Epoch == before.Epoch {
		t.Errorf("the epoch is still %q after Redis restarted empty", after.Epoch)
	}
	awaitCaughtUp(t, recs, []*publisher{p}, 30*time.Second)
	tl := account(recs, []*publisher{p})
	reconnects := 0
	for _, rc := range rcs {
		reconnects += rc.Reconnects()
	}
	t.Logf("TestHistoryRecovery/RedisRestartedEmpty: epoch %s -> %s; every client told within %v of the stop (%s; %d reconnects); a join with the old epoch's position: %s; %d published; %s",
		before.Epoch, after.Epoch, learnedIn.Round(100*time.Millisecond), histogram(reasons), reconnects, r.Payload, last, tl)
	if !tl.ok() {
		t.Errorf("a broadcast was silently skipped, doubled, reordered or misplaced: %s; e.g. %v", tl, tl.examples)
	}
}

// awaitPositions returns once broadcasts published through each of nodes
// reach a client on each of them with a position. A node starts
// publishing positions only once its Gate has heard every node announce
// that it reads them (pubsub/redis, doc.go: a few report intervals after
// its start); before, its broadcasts reach subscribers without one.
func awaitPositions(t *testing.T, cl *harness.Cluster, nodes ...int) {
	t.Helper()
	ctx := timeout(t, time.Minute)
	const topic = "room:gate"
	began := time.Now()
	var clients []*wsclient.Client
	for _, i := range nodes {
		ws := cl.Dial(ctx, i, nil)
		join(ctx, t, ws, topic)
		clients = append(clients, ws)
	}
	for _, from := range nodes {
		p := newPublisher(fmt.Sprintf("gate%d", from), func() string { return cl.Node(from).HTTPURL() }, []string{topic}, 0)
		for n := 1; ; n++ {
			publishOne(ctx, t, p, topic, n)
			positioned := 0
			for _, ws := range clients {
				m, err := ws.Await(ctx, func(m wsclient.Message) bool {
					var tk tick
					return wsclient.IsEvent(topic, tickEvent)(m) && json.Unmarshal(m.Payload, &tk) == nil && tk.From == p.name && tk.N == n
				})
				if err != nil {
					t.Fatalf("probe %s %d: %v", p.name, n, err)
				}
				if !m.Ref.IsNull() {
					positioned++
				}
			}
			if positioned == len(clients) {
				break
			}
			if time.Since(began) > 30*time.Second {
				t.Fatalf("broadcasts through node %d still reach clients without a position after %v", from, time.Since(began).Round(time.Millisecond))
			}
			time.Sleep(100 * time.Millisecond) // probing pace
		}
		p.hc.CloseIdleConnections()
	}
	for _, ws := range clients {
		_ = ws.Close()
	}
	t.Logf("broadcasts carry positions on every node %v after the start", time.Since(began).Round(100*time.Millisecond))
}

// checkRecovered fails the test unless the tally is exactly once with
// every loss recovered and at least one rejoin that recovered.
func checkRecovered(t *testing.T, tl tally) {
	t.Helper()
	if !tl.ok() {
		t.Errorf("not exactly once: %s; e.g. %v", tl, tl.examples)
	}
	if len(tl.bare) > 0 {
		// The cluster's Gates were open before the subtests began
		// (awaitPositions), and the publishing node never restarts.
		t.Errorf("%d broadcasts acknowledged with a position reached a client without one: %v", len(tl.bare), slices.Collect(maps.Keys(tl.bare)))
	}
	if tl.learned > 0 {
		t.Errorf("%d broadcasts were not recovered (%s)", tl.learned, histogram(tl.notRecovered))
	}
	if tl.recovered == 0 {
		t.Errorf("no rejoin recovered anything: %s", tl)
	}
}

// dialRecovering connects a Reconnecting client to url that joins rec's
// topic with rec's params and records into rec; closed in t.Cleanup.
func dialRecovering(ctx context.Context, t testing.TB, url string, rec *recoverer, opts wsclient.Options) *wsclient.Reconnecting {
	t.Helper()
	opts.Params = map[string]string{"user": rec.user}
	rc, err := wsclient.DialReconnecting(ctx, url, wsclient.ReconnectOptions{
		Options:     opts,
		OnMessage:   rec.onMessage,
		OnJoinReply: func(_ string, conn int, m wsclient.Message) { rec.onJoinReply(conn, m) },
	}, rec.topic, rec.params)
	if err != nil {
		t.Fatalf("%s: %v", rec.user, err)
	}
	t.Cleanup(func() { _ = rc.Close() })
	return rc
}

// awaitReceived waits until rec has received n numbered broadcasts.
func awaitReceived(t testing.TB, rec *recoverer, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, got, _, _, _ := rec.snapshot()
		if len(got) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s received %d broadcasts in %v, want %d", rec.user, len(got), within, n)
		}
		time.Sleep(20 * time.Millisecond) // polling what the client's goroutine records
	}
}

// awaitReconnected waits until rc has connected again n times and is
// connected.
func awaitReconnected(t testing.TB, rc *wsclient.Reconnecting, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for rc.Reconnects() < n || !rc.Connected() {
		if time.Now().After(deadline) {
			t.Fatalf("the client did not reconnect within %v: %+v", within, rc.Conns())
		}
		time.Sleep(20 * time.Millisecond) // polling the client's state
	}
}

// smallReceiveBuffer dials with a 4 KiB SO_RCVBUF, so that a client that
// stops reading stops its node's writes soon.
func smallReceiveBuffer(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	return d.DialContext(ctx, network, addr)
}

// ackFor is the acknowledgement of number n (zero if none).
func (p *publisher) ackFor(n int) ack {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acks[n]
}

// mustPosition parses a position the server gave.
func mustPosition(t testing.TB, s string) pubsub.Position {
	t.Helper()
	p, err := pubsub.ParsePosition(s)
	if err != nil {
		t.Fatalf("position %q: %v", s, err)
	}
	return p
}
