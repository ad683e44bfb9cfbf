package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
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

// A rolling restart as Kubernetes does it: three nodes behind the
// round-robin load balancer, 1,000 clients in ten rooms that reconnect and
// rejoin as phoenix.js does, and a publisher sending numbered broadcasts
// to every room through the load balancer all along. Each node in turn
// gets SIGTERM (it drains: not ready, new sockets refused, its sockets
// closed with 1012 in batches over the drain window, presence removed)
// and is replaced by a new container with a new node id under the same
// name. Afterwards: every client is connected; every room's presence on
// every node lists exactly its clients, once each; every broadcast
// published while a client was connected (joined before the publish
// began, and still connected rollSlack after the publish ended) reached it,
// and no broadcast reached any client twice; no node exited before its
// drain had finished.
func TestRollingRestart(t *testing.T) {
	const (
		clients     = 1000
		rooms       = 10
		drainWindow = 3 * time.Second
		tick        = 250 * time.Millisecond
		// rollSlack: a broadcast the API acknowledged is still on its way
		// through Redis when the node closes the socket; delivery is
		// at-most-once, so the guarantee holds for a client that stays
		// connected a little longer than the publish.
		rollSlack = time.Second
	)
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info",
		Env:  map[string]string{"CHANNELS_DRAIN_WINDOW": drainWindow.String()},
		Args: []string{"--presence-heartbeat=500ms", "--report-interval=500ms"},
	})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	type client struct {
		rc   *wsclient.Reconnecting
		user string
		room int
		got  *harness.Numbered
	}
	cs := make([]*client, clients)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	sem := make(chan struct{}, 50)
	for i := range clients {
		c := &client{user: "u" + strconv.Itoa(i), room: i % rooms, got: harness.NewNumbered("room:roll-"+strconv.Itoa(i%rooms), "tick")}
		cs[i] = c
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			topic := "room:roll-" + strconv.Itoa(c.room)
			rc, err := wsclient.DialReconnecting(ctx, lb.WSURL(), wsclient.ReconnectOptions{
				Options:   wsclient.Options{Params: map[string]string{"user": c.user}, Buffer: 64},
				OnMessage: c.got.OnMessage,
			}, topic, map[string]string{"user": c.user})
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			c.rc = rc
		}()
	}
	wg.Wait()
	close(errs)
	defer func() {
		for _, c := range cs {
			if c.rc != nil {
				_ = c.rc.Close()
			}
		}
	}()
	for err := range errs {
		t.Fatal(err)
	}

	// The publisher: every tick, broadcast number n to every room through
	// the load balancer, recording when each publish began and ended.
	type publish struct {
		start, end time.Time
		ok         bool
	}
	var pmu sync.Mutex
	pubs := map[[2]int]publish{} // {n, room}
	stopPub := make(chan struct{})
	pubDone := make(chan int)
	api := &http.Client{Timeout: 5 * time.Second}
	go func() {
		n := 0
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-stopPub:
				pubDone <- n
				return
			case <-t.C:
			}
			n++
			var round sync.WaitGroup
			for r := range rooms {
				round.Add(1)
				go func() {
					defer round.Done()
					p := publish{start: time.Now()}
					body, _ := json.Marshal(map[string]any{"topic": "room:roll-" + strconv.Itoa(r), "event": "tick", "payload": map[string]int{"n": n}})
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, lb.HTTPURL()+"/api/broadcast", bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Authorization", "Bearer "+harness.APIKey)
					if res, err := api.Do(req); err == nil {
						p.ok = res.StatusCode == http.StatusAccepted
						res.Body.Close()
					}
					p.end = time.Now()
					pmu.Lock()
					pubs[[2]int{n, r}] = p
					pmu.Unlock()
				}()
			}
			round.Wait()
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
	// When each node was told to drain: the earliest its sockets could be
	// closed (see serverSideEnd).
	var drains []time.Time
	for i := 1; i <= 3; i++ {
		sockets := socketsPerNode(ctx, t, cl, i)[i]
		drains = append(drains, time.Now())
		r := cl.ReplaceNode(i, 30*time.Second)
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
	close(stopPub)
	last := <-pubDone
	// Let the last broadcasts arrive: every client that is joined now
	// receives the final tick.
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range cs {
		for {
			n := c.got.Times(last)
			pmu.Lock()
			ok := pubs[[2]int{last, c.room}].ok
			pmu.Unlock()
			if n > 0 || !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("client %s never received the last broadcast %d", c.user, last)
			}
			time.Sleep(20 * time.Millisecond) // polling a map the client's goroutine fills
		}
	}

	// Broadcasts: once at most, and every one published while connected.
	missing, dups, expected := 0, 0, 0
	var examples []string
	for _, c := range cs {
		conns := serverSideEnd(c.rc.Conns(), drains)
		got := c.got.Received()
		for n := 1; n <= last; n++ {
			if got[n] > 1 {
				dups++
			}
			p := pubs[[2]int{n, c.room}]
			if !p.ok {
				continue
			}
			if !wsclient.Covered(conns, p.start, p.end, rollSlack) {
				continue
			}
			expected++
			if got[n] == 0 {
				missing++
				if len(examples) < 5 {
					examples = append(examples, fmt.Sprintf("%s lost %d (published %s..%s, connections %+v)",
						c.user, n, p.start.Format("15:04:05.000"), p.end.Format("15:04:05.000"), conns))
				}
			}
		}
	}
	var pubTime time.Duration
	pubFailed := 0
	for _, p := range pubs {
		pubTime += p.end.Sub(p.start)
		if !p.ok {
			pubFailed++
		}
	}
	t.Logf("%d publishes (%d failed), %v each on average", len(pubs), pubFailed, (pubTime / time.Duration(max(1, len(pubs)))).Round(time.Millisecond))
	t.Logf("%d broadcasts rounds; %d deliveries owed to connected clients, %d missing, %d duplicated", last, expected, missing, dups)
	if missing > 0 || dups > 0 {
		t.Fatalf("%d broadcasts lost by connected clients, %d received twice; e.g. %v", missing, dups, examples)
	}
	if expected < clients {
		t.Fatalf("only %d deliveries were owed: the publisher or the clients did not run", expected)
	}

	// Moves: every client was moved by each drain of its node; count them.
	moved := 0
	for _, c := range cs {
		for _, cn := range c.rc.Conns() {
			if cn.Status.Received && cn.Status.Code == channels.CloseServiceRestart {
				moved++
			}
		}
	}
	t.Logf("%d reconnections after a 1012 close", moved)

	// Presence: every node lists exactly the room's users, once each.
	want := model{}
	for r := range rooms {
		want["room:roll-"+strconv.Itoa(r)] = map[string]int{}
	}
	for _, c := range cs {
		want["room:roll-"+strconv.Itoa(c.room)][c.user] = 1
	}
	logRedisPresenceOnFailure(t, cl, "room:roll-0")
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
