package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// A rolling restart as Kubernetes does it, with history: three nodes
// behind the round-robin load balancer with rebalancing on, rooms keeping
// history (--history), 1,000 clients in ten rooms that reconnect and
// rejoin as phoenix.js does, sending the last position they saw
// ({"since"}), and two publishers numbering their broadcasts, 50 a second
// each, A through node 1's HTTP API and B through node 3's, to every room
// in turn (each room's in order, the rooms' round trips overlapping). A
// publish the API refused (its node restarting) is retried with the same
// number until acknowledged. Each node in turn gets SIGTERM (it drains:
// not ready, new sockets refused, its sockets closed with 1012 in batches
// over the drain window, presence removed) and is replaced by a new
// container with a new node id under the same name. Afterwards: every
// client is connected; every broadcast acknowledged for a client's room
// after its first join reached it exactly once, in each publisher's
// order, under the position the API answered, and no hole in positions
// ever reached a client; every room's presence on every node lists
// exactly its clients, once each; no node exited before its drain had
// finished. It runs on one Redis, then, unchanged, on a Redis Cluster of
// three masters (harness.Options.RedisCluster). make test runs it without
// the race detector (see the Makefile), which would slow the clients
// below the publishers' pace; the publishers' achieved rate and round
// trips are logged.
func TestRollingRestart(t *testing.T) {
	t.Run("OneRedis", func(t *testing.T) { testRollingRestart(t, false) })
	t.Run("RedisCluster", func(t *testing.T) { testRollingRestart(t, true) })
}

// testRollingRestart is TestRollingRestart on one Redis or a Redis
// Cluster.
func testRollingRestart(t *testing.T, redisCluster bool) {
	const (
		clients     = 1000
		rooms       = 10
		drainWindow = 3 * time.Second
		// each publisher's pace: 50 broadcasts a second.
		every = 20 * time.Millisecond
		// gateSlack: how long after a new node is ready its Gate may
		// still be closed (it opens within a round trip; the machine is
		// loaded).
		gateSlack = 3 * time.Second
	)
	began := time.Now()
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info", RedisCluster: redisCluster,
		Env: map[string]string{"CHANNELS_DRAIN_WINDOW": drainWindow.String()},
		Args: []string{"--presence-heartbeat=500ms", "--report-interval=500ms", historyRule,
			"--rebalance-threshold=0.2", "--rebalance-share=0.1"},
	})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	type client struct {
		rc   *wsclient.Reconnecting
		rec  *recoverer
		user string
		room int
	}
	topics := make([]string, rooms)
	for r := range rooms {
		topics[r] = "room:roll-" + strconv.Itoa(r)
	}
	cs := make([]*client, clients)
	recs := make([]*recoverer, clients)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	sem := make(chan struct{}, 50)
	for i := range clients {
		c := &client{user: "u" + strconv.Itoa(i), room: i % rooms}
		c.rec = newRecoverer(topics[c.room], c.user)
		cs[i], recs[i] = c, c.rec
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rc, err := wsclient.DialReconnecting(ctx, lb.WSURL(), wsclient.ReconnectOptions{
				Options:     wsclient.Options{Params: map[string]string{"user": c.user}, Buffer: 64},
				OnMessage:   c.rec.onMessage,
				OnJoinReply: func(_ string, conn int, m wsclient.Message) { c.rec.onJoinReply(conn, m) },
			}, topics[c.room], c.rec.params)
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			c.rc = rc
		}()
	}
	wg.Wait()
	close(errs)
	// A cleanup, not a defer: the dump of Redis's presence on failure
	// (registered later, so run first) sees the clients still connected.
	t.Cleanup(func() {
		for _, c := range cs {
			if c.rc != nil {
				_ = c.rc.Close()
			}
		}
	})
	for err := range errs {
		t.Fatal(err)
	}

	pubs := []*publisher{
		newPublisher("A", func() string { return cl.Node(1).HTTPURL() }, topics, every).start(ctx),
		newPublisher("B", func() string { return cl.Node(3).HTTPURL() }, topics, every).start(ctx),
	}
	defer func() {
		for _, p := range pubs {
			p.finish()
		}
	}()

	allConnected := func(what string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			down := 0
			for _, c := range cs {
				if !c.rc.Connected() {
					down++
				}
			}
			if down == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d clients still not connected", what, down)
			}
			time.Sleep(100 * time.Millisecond) // polling the clients' state
		}
	}
	rolled := time.Now()
	// When each replacement ran: [SIGTERM, new node ready].
	var replacing [][2]time.Time
	for i := 1; i <= 3; i++ {
		sockets := socketsPerNode(ctx, t, cl, i)[i]
		from := time.Now()
		r := cl.ReplaceNode(i, 30*time.Second)
		replacing = append(replacing, [2]time.Time{from, time.Now()})
		t.Logf("%s (%d sockets) stopped in %v, exit code %d; replaced by %s", r.ID, sockets, r.Stopping.Round(time.Millisecond), r.ExitCode, cl.Node(i).ID)
		if r.ExitCode != 0 {
			t.Errorf("%s exited with code %d (SIGKILL after the grace period?)", r.ID, r.ExitCode)
		}
		if !strings.Contains(r.Logs, "node: draining") || !strings.Contains(r.Logs, "node: stopped") {
			t.Errorf("%s did not log its drain and its stop:\n%s", r.ID, r.Logs)
		}
		if strings.Contains(r.Logs, "still open at the shutdown deadline") {
			t.Errorf("%s exited with sockets still open", r.ID)
		}
		// Spread over the window, the last batch goes out at window*(b-1)/b.
		if sockets >= 20 && r.Stopping < drainWindow/2 {
			t.Errorf("%s stopped %v after SIGTERM, before its %v drain window could have passed", r.ID, r.Stopping, drainWindow)
		}
		lb.AwaitServer(i, "UP", 30*time.Second)
		allConnected(fmt.Sprintf("after replacing node %d", i))
	}
	rollTook := time.Since(rolled)
	// A second of publishing on the new nodes, then every client must
	// catch up with the last broadcast of each publisher to its room.
	time.Sleep(time.Second) // publishing after the last step, not a synchronisation
	lastA, lastB := pubs[0].finish(), pubs[1].finish()
	awaitCaughtUp(t, recs, pubs, 30*time.Second)

	tl := account(recs, pubs)
	_, _, refusedA := pubs[0].ledger()
	_, _, refusedB := pubs[1].ledger()
	moved := 0
	for _, c := range cs {
		for _, cn := range c.rc.Conns() {
			if cn.Status.Received && cn.Status.Code == channels.CloseServiceRestart {
				moved++
			}
		}
	}
	t.Logf("%s: %d clients, %d reconnections after a 1012 close; publishers A %d acknowledged (%d attempts refused), B %d (%d refused); %s; roll %v, whole test %v",
		t.Name(), clients, moved, lastA, refusedA, lastB, refusedB, tl, rollTook.Round(100*time.Millisecond), time.Since(began).Round(100*time.Millisecond))
	for _, p := range pubs {
		med, slowest, rate := p.latency()
		t.Logf("%s: publisher %s: %.1f acknowledged broadcasts a second, API round trip median %v, slowest %v", t.Name(), p.name, rate, med.Round(time.Millisecond/10), slowest.Round(time.Millisecond))
	}
	if !tl.ok() {
		t.Errorf("not exactly once: %s; e.g. %v", tl, tl.examples)
	}
	// The one exception (PROTOCOL.md §12.6): a node's first broadcasts,
	// before its Gate has heard every node (a round trip after its
	// start), take a position in the history but go out without it. Each
	// such broadcast must have been published around a replacement.
	bareOK := 0
	for bt := range tl.bare {
		p := pubs[0]
		if bt.From == pubs[1].name {
			p = pubs[1]
		}
		a := p.ackFor(bt.N)
		near := false
		for _, w := range replacing {
			near = near || (a.Start.After(w[0]) && a.Start.Before(w[1].Add(gateSlack)))
		}
		if near {
			bareOK++
		} else {
			t.Errorf("%s %d (%s, published %s) reached clients without its position, not near a node's start", bt.From, bt.N, a.Pos, a.Start.Format("15:04:05.000"))
		}
	}
	t.Logf("%s: %d broadcasts acknowledged with a position reached clients without one, all published during a replacement or within %v after it", t.Name(), bareOK, gateSlack)
	if tl.learned > 0 {
		t.Errorf("%d broadcasts could not be recovered (join replies said recovered false: %s), with Redis up all along", tl.learned, histogram(tl.notRecovered))
	}
	if tl.owed < clients*(lastA+lastB)/rooms/2 {
		t.Errorf("only %d deliveries were owed for %d+%d broadcasts: the publishers or the clients did not run", tl.owed, lastA, lastB)
	}
	if tl.recovered == 0 {
		t.Errorf("no rejoin recovered anything, yet %d clients moved", moved)
	}

	// Presence: every node lists exactly the room's users, once each.
	want := model{}
	for r := range rooms {
		want[topics[r]] = map[string]int{}
	}
	for _, c := range cs {
		want[topics[c.room]][c.user] = 1
	}
	logRedisPresenceOnFailure(t, cl, "room:roll-0")
	logRedisUsersOnFailure(t, cl, "room:roll-0")
	settle(t, "presence after the rolling restart", settleTimeout, func(ctx context.Context) (string, error) {
		return checkLists(ctx, cl, []int{1, 2, 3}, want)
	})
}

// serverSideEnd moves the end of each connection that a draining node
// closed (1012) back to when that node was told to drain, the latest drain
// that began before the client saw the close. The client's Ended is when
// its reader reached the close frame, which lags the server's close by
// however long the client takes to read what was queued before it:
// seconds, on a loaded machine. A broadcast published within that lag was
// never owed to the connection (the server had closed it), yet would
// count as lost. The server closes no socket before its drain begins, so
// the connection was open server-side up to there.
func serverSideEnd(conns []wsclient.Conn, drains []time.Time) []wsclient.Conn {
	out := slices.Clone(conns)
	for i, cn := range out {
		if !cn.Status.Received || cn.Status.Code != channels.CloseServiceRestart {
			continue
		}
		for _, d := range drains {
			if d.Before(cn.Ended) && d.After(cn.Joined) {
				out[i].Ended = d
			}
		}
	}
	return out
}
