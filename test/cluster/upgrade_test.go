package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// upgradeFrom is the release TestRollingUpgrade upgrades from (any commit
// git rev-parse takes; UPGRADE_FROM overrides it): the first release whose
// successors promise to read what they write and to be read by it. When a
// cross-node form changes, the release before the change is the one to
// test from as well.
const upgradeFrom = "b847059"

// A rolling update from an earlier release to this one, as Kubernetes
// does it: three nodes of the earlier release (built from git by
// harness.BuildNodeImageAt) behind the round-robin load balancer, with
// Redis and an API key; in each of three rooms, WebSocket clients that
// reconnect and rejoin as phoenix.js does, one WebSocket client pushing
// numbered new_msg, and one long-poll client (its requests spread over
// every node, relayed to the node that holds its session) pushing
// numbered new_msg too; numbered broadcasts through POST /api/broadcast
// all along. Each node in turn is drained and replaced by a node of this
// release, so that for most of the test both releases write broadcasts,
// presence and long-poll relays that the other must read. After the first
// and the second step a long-poll client opens its session on a new node,
// so that old nodes relay to new ones as well as the reverse.
//
// Afterwards, and at every step for presence: every broadcast published
// while a client was joined (joined before the publish began, still
// connected rollSlack after it was acknowledged; a socket a draining node
// closed counts as closed at its drain's start, as in TestRollingRestart)
// reached it, and none reached any client twice; each node's presence
// list of each room is exactly the room's clients; every long-poll
// session lost was lost to its own node's drain, never to a request
// relayed to a node of the other release, and requests were relayed
// across releases both ways.
func TestRollingUpgrade(t *testing.T) {
	oldImage := earlierRelease(t)
	t.Logf("upgrading from %s to %s", oldImage, harness.NodeImage())
	rollRelease(t, oldImage, harness.NodeImage())
}

// TestRollingRollback is TestRollingUpgrade backwards: three nodes of this
// build rolled, one at a time, back to the earlier release, as an operator
// undoes a bad deploy. Whatever this build writes once every node reads
// it, it must stop writing when a node of the earlier release joins.
func TestRollingRollback(t *testing.T) {
	oldImage := earlierRelease(t)
	t.Logf("rolling back from %s to %s", harness.NodeImage(), oldImage)
	rollRelease(t, harness.NodeImage(), oldImage)
}

// earlierRelease builds (or finds) the image of upgradeFrom, or of
// UPGRADE_FROM when set.
func earlierRelease(t *testing.T) string {
	t.Helper()
	from := upgradeFrom
	if v := os.Getenv("UPGRADE_FROM"); v != "" {
		from = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()
	image, err := harness.BuildNodeImageAt(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s is %s, ready in %v", from, image, time.Since(began).Round(time.Millisecond))
	return image
}

// rollRelease runs the scenario of TestRollingUpgrade from the nodes of
// oldImage to those of newImage ("old" and "new" in its messages are the
// release rolled from and to).
func rollRelease(t *testing.T, oldImage, newImage string) {
	const (
		nodes       = 3
		rooms       = 3
		perRoom     = 8 // WebSocket clients that only listen
		drainWindow = 2 * time.Second
		tick        = 300 * time.Millisecond
		rollSlack   = time.Second
		apiKey      = "upgrade-test-key"
	)
	cl := harness.Start(t, harness.Options{Nodes: nodes, Image: oldImage, LogLevel: "info",
		Env: map[string]string{
			"CHANNELS_DRAIN_WINDOW": drainWindow.String(),
			"CHANNELS_API_KEY":      apiKey,
		},
		// The listeners send nothing (phoenix.js would heartbeat every
		// 30 s): no idle close may end them in a slow run.
		Args: []string{"--presence-heartbeat=500ms", "--report-interval=500ms", "--idle-timeout=10m"},
	})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	topicOf := func(r int) string { return "room:upgrade-" + strconv.Itoa(r) }

	pubs := newUpgradePubs()
	var receivers []*upgradeReceiver
	var wsClients []*wsclient.Reconnecting
	defer func() {
		for _, rc := range wsClients {
			_ = rc.Close()
		}
	}()
	// drains are when each node was told to drain; up, when its
	// replacement was ready. Written by this goroutine only, read after
	// the publishers have stopped.
	var drains []time.Time
	drainAt, upAt := map[string]time.Time{}, map[string]time.Time{}

	// The WebSocket clients: listeners, and one pusher per room.
	type wsPusher struct {
		rc   *wsclient.Reconnecting
		room int
		recv *upgradeReceiver
	}
	var pushers []*wsPusher
	var wg sync.WaitGroup
	var rmu sync.Mutex
	errs := make(chan error, rooms*(perRoom+1))
	sem := make(chan struct{}, 10)
	for r := range rooms {
		for i := range perRoom + 1 {
			user := fmt.Sprintf("ws-%d-%d", r, i)
			pusher := i == perRoom
			if pusher {
				user = fmt.Sprintf("wsp-%d", r)
			}
			recv := newUpgradeReceiver(user, r, topicOf(r))
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				onMessage := recv.onMessage
				if pusher {
					onMessage = func(m wsclient.Message) {
						recv.onMessage(m)
						if m.Event == channels.EventReply && m.Topic == topicOf(r) {
							pubs.replied("ws:"+user, m)
						}
					}
				}
				rc, err := wsclient.DialReconnecting(ctx, lb.WSURL(), wsclient.ReconnectOptions{
					Options:   wsclient.Options{Params: map[string]string{"user": user}, Buffer: 64},
					OnMessage: onMessage,
				}, topicOf(r), map[string]string{"user": user})
				if err != nil {
					errs <- fmt.Errorf("%s: %w", user, err)
					return
				}
				recv.conns = func() []wsclient.Conn { return serverSideEnd(rc.Conns(), drains) }
				recv.connected = rc.Connected
				rmu.Lock()
				defer rmu.Unlock()
				wsClients = append(wsClients, rc)
				receivers = append(receivers, recv)
				if pusher {
					pushers = append(pushers, &wsPusher{rc: rc, room: r, recv: recv})
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The long-poll clients, one per room, through the load balancer.
	// addLP opens one, with its session on a node of image unless that is
	// "" (the load balancer picks the node: up to 12 sessions are opened
	// and all but the right one closed). A join not answered is an error
	// of the test (nil), not the end of it, so that the accounting below
	// still shows what else crossed the releases.
	addLP := func(user string, room int, image string) *upgradeLP {
		t.Helper()
		var c *lpclient.Client
		for try := 1; c == nil; try++ {
			nc, err := lpclient.Open(ctx, lb.LongPollURL(), lpclient.Options{Params: map[string]string{"user": user}, Reconnect: true, Buffer: 256})
			if err != nil {
				t.Fatalf("%s: %v", user, err)
			}
			if image == "" || cl.Node(ownerOf(t, nc)).Image == image {
				c = nc
				continue
			}
			_ = nc.Close()
			if try == 12 {
				t.Fatalf("%s: no session on a node of %s in %d tries", user, image, try)
			}
		}
		jctx, jcancel := context.WithTimeout(ctx, waitTimeout)
		jr, err := c.Join(jctx, topicOf(room), map[string]string{"user": user})
		jcancel()
		if err != nil || jr.Status != "ok" {
			t.Errorf("%s (session on %s): join through the load balancer: %v %v", user, c.Requests()[0].ServedBy, jr, err)
			_ = c.Close()
			return nil
		}
		lp := &upgradeLP{c: c, room: room, recv: newUpgradeReceiver(user, room, topicOf(room)), joins: []time.Time{time.Now()}}
		lp.recv.conns = func() []wsclient.Conn { return lp.conns(drains) }
		lp.recv.connected = lp.connected
		receivers = append(receivers, lp.recv)
		done := make(chan struct{})
		go lp.run(ctx, pubs, done)
		t.Cleanup(func() { _ = c.Close(); <-done })
		return lp
	}
	lps := make([]*upgradeLP, rooms)
	for r := range rooms {
		if lps[r] = addLP(fmt.Sprintf("lp-%d", r), r, ""); lps[r] == nil {
			t.FailNow()
		}
	}
	lpAll := slices.Clone(lps)

	// Presence, the truth: every client in its room once.
	want := model{}
	for _, rc := range receivers {
		if want[rc.topic] == nil {
			want[rc.topic] = map[string]int{}
		}
		want[rc.topic][rc.user] = 1
	}
	allNodes := []int{1, 2, 3}
	logRedisPresenceOnFailure(t, cl, topicOf(0))
	settle(t, "presence before the roll", settleTimeout, func(ctx context.Context) (string, error) {
		return checkLists(ctx, cl, allNodes, want)
	})

	// The publishers, each on its own ticker until stop.
	stop := make(chan struct{})
	var pubWG sync.WaitGroup
	every := func(f func(n int)) {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			tk := time.NewTicker(tick)
			defer tk.Stop()
			for n := 1; ; n++ {
				select {
				case <-stop:
					return
				case <-tk.C:
				}
				f(n)
			}
		}()
	}
	api := &http.Client{Timeout: 5 * time.Second}
	every(func(n int) {
		var round sync.WaitGroup
		for r := range rooms {
			round.Add(1)
			go func() {
				defer round.Done()
				key := upgradePubKey{"tick", r, n}
				pubs.begin(key)
				body, _ := json.Marshal(map[string]any{"topic": topicOf(r), "event": "tick", "payload": map[string]int{"n": n}})
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, lb.HTTPURL()+"/api/broadcast", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+apiKey)
				ok, by := false, ""
				if res, err := api.Do(req); err == nil {
					ok, by = res.StatusCode == http.StatusAccepted, res.Header.Get(harness.ServedByHeader)
					res.Body.Close()
				}
				pubs.end(key, ok, by)
			}()
		}
		round.Wait()
	})
	for _, p := range pushers {
		stream := "ws:" + p.recv.user
		every(func(n int) {
			key := upgradePubKey{stream, p.room, n}
			pubs.begin(key)
			ref, err := p.rc.Push(topicOf(p.room), "new_msg", map[string]any{"body": map[string]int{"n": n}})
			if err != nil {
				pubs.end(key, false, "")
				return
			}
			pubs.awaitReply(stream, ref, key)
		})
	}
	for _, lp := range lps {
		stream := "lp:" + lp.recv.user
		every(func(n int) {
			key := upgradePubKey{stream, lp.room, n}
			pubs.begin(key)
			if !lp.connected() {
				pubs.end(key, false, "")
				return
			}
			ref, err := lp.c.Push(topicOf(lp.room), "new_msg", map[string]any{"body": map[string]int{"n": n}})
			if err != nil {
				pubs.end(key, false, "")
				return
			}
			pubs.awaitReply(stream, ref, key)
		})
	}
	stopped := false
	stopPublishers := func() {
		if !stopped {
			stopped = true
			close(stop)
			pubWG.Wait()
		}
	}
	defer stopPublishers()

	allConnected := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var down []string
			for _, rc := range receivers {
				if !rc.connected() {
					down = append(down, rc.user)
				}
			}
			if len(down) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %d clients still not joined after 30 s: %v", what, len(down), down)
				return
			}
			time.Sleep(100 * time.Millisecond) // polling the clients' state
		}
	}

	// Let both kinds of publishers run on the old release for a while.
	time.Sleep(2 * time.Second) // a phase of the test, not a synchronisation
	rollBegan := time.Now()
	for i := 1; i <= nodes; i++ {
		alias := cl.Node(i).Alias
		now := time.Now()
		drains = append(drains, now)
		drainAt[alias] = now
		r := cl.ReplaceNodeWith(i, 30*time.Second, newImage)
		upAt[alias] = time.Now()
		t.Logf("%s (%s) stopped in %v, exit code %d; replaced by %s (%s)", r.ID, oldImage, r.Stopping.Round(time.Millisecond), r.ExitCode, cl.Node(i).ID, newImage)
		if r.ExitCode != 0 {
			t.Errorf("%s exited with code %d (SIGKILL after the grace period?)", r.ID, r.ExitCode)
		}
		lb.AwaitServer(i, "UP", 30*time.Second)
		allConnected(fmt.Sprintf("after rolling node %d to the new release", i))
		if i < nodes {
			// A long-poll session on a new node, whose requests the old
			// nodes relay to it.
			user, room := fmt.Sprintf("lpn-%d", i), i%rooms
			if lp := addLP(user, room, newImage); lp != nil {
				lpAll = append(lpAll, lp)
				want[topicOf(room)][user] = 1
			}
		}
		settleOrError(t, fmt.Sprintf("presence with %d of %d nodes on the new release", i, nodes), func(ctx context.Context) (string, error) {
			return checkLists(ctx, cl, allNodes, want)
		})
		if i < nodes {
			// Both releases serve side by side for a while.
			time.Sleep(2 * time.Second) // a phase of the test, not a synchronisation
		}
	}
	t.Logf("rolled %d nodes in %v", nodes, time.Since(rollBegan).Round(time.Millisecond))
	stopPublishers()

	// Let the last broadcasts arrive: every client, joined now, receives
	// the last acknowledged broadcast of every stream of its room.
	last := pubs.lastOK()
	deadline := time.Now().Add(30 * time.Second)
	for _, rc := range receivers {
		if !rc.connected() {
			continue // an error already
		}
		for stream, n := range last[rc.room] {
			for rc.times(stream, n) == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond) // polling a map the client's goroutine fills
			}
			if rc.times(stream, n) == 0 {
				t.Errorf("%s never received %s %d, the last of its room", rc.user, stream, n)
			}
		}
	}

	// Broadcasts: once at most, and every one owed, whichever release
	// published it and whichever the client was on.
	releaseAt := func(alias string, at time.Time) string {
		switch d, ok := drainAt[alias]; {
		case !ok || at.Before(d):
			return "old"
		case at.After(upAt[alias]):
			return "new"
		}
		return "?"
	}
	all := pubs.snapshot()
	missing, dups, expected := 0, 0, 0
	owedBy := map[string]int{}
	var examples []string
	for _, rc := range receivers {
		conns := rc.conns()
		got := rc.received()
		for key, p := range all {
			if key.room != rc.room {
				continue
			}
			if got[key.stream][key.n] > 1 {
				dups++
				if len(examples) < 8 {
					examples = append(examples, fmt.Sprintf("%s got %s %d %d times", rc.user, key.stream, key.n, got[key.stream][key.n]))
				}
			}
			if !p.ok || !wsclient.Covered(conns, p.start, p.end, rollSlack) {
				continue
			}
			expected++
			if p.by != "" {
				// "new" counts only while an old node still ran: those are
				// the broadcasts the old release had to read.
				if rel := releaseAt(p.by, p.start); rel != "new" || p.start.Before(drains[len(drains)-1]) {
					owedBy[rel]++
				}
			}
			if got[key.stream][key.n] == 0 {
				missing++
				if len(examples) < 8 {
					examples = append(examples, fmt.Sprintf("%s lost %s %d (published %s..%s via %s, connections %+v)",
						rc.user, key.stream, key.n, p.start.Format("15:04:05.000"), p.end.Format("15:04:05.000"), p.by, conns))
				}
			}
		}
	}
	okPubs := 0
	for _, p := range all {
		if p.ok {
			okPubs++
		}
	}
	t.Logf("%d publishes (%d acknowledged); %d deliveries owed (of API broadcasts: %d published on old nodes, %d on new ones while an old node ran), %d missing, %d duplicated",
		len(all), okPubs, expected, owedBy["old"], owedBy["new"], missing, dups)
	if missing > 0 || dups > 0 {
		t.Errorf("%d broadcasts lost by joined clients, %d received twice; e.g.\n%s", missing, dups, strings.Join(examples, "\n"))
	}
	if owedBy["old"] == 0 || owedBy["new"] == 0 {
		t.Errorf("deliveries owed of broadcasts published on old nodes: %d, on new ones while an old node ran: %d; want both", owedBy["old"], owedBy["new"])
	}

	// Long-poll: requests crossed releases both ways, and a session was
	// only ever lost to its own node's drain.
	cross := map[string]int{}
	for _, lp := range lpAll {
		owner := ""
		var reqFailures []string
		reqs := lp.c.Requests()
		losses := lp.c.Losses()
		sessions := 0
		for _, rq := range reqs {
			if rq.Open && rq.Status == 410 && rq.ServedBy != "" {
				owner = rq.ServedBy
				sessions++
				continue
			}
			if rq.End.IsZero() || owner == "" || rq.ServedBy == "" {
				if rq.Err != nil && !rq.End.IsZero() && len(reqFailures) < 5 {
					reqFailures = append(reqFailures, fmt.Sprintf("%s at %s: %v", rq.Method, rq.Start.Format("15:04:05.000"), rq.Err))
				}
				continue
			}
			from, to := releaseAt(owner, rq.Start), releaseAt(rq.ServedBy, rq.Start)
			if rq.HTTPStatus == http.StatusOK && (rq.Status == 200 || rq.Status == 204) && from != to && from != "?" && to != "?" {
				cross[from+"->"+to]++
			}
		}
		for k, loss := range losses {
			// The k-th session's owner was the k-th opening GET's server.
			opens := 0
			owner := ""
			for _, rq := range reqs {
				if rq.Open && rq.Status == 410 && rq.ServedBy != "" {
					if opens == k {
						owner = rq.ServedBy
						break
					}
					opens++
				}
			}
			d, ok := drainAt[owner]
			// The client learns of the loss at its next answer: a poll in
			// flight waits up to the window (10 s) plus the relay's margin.
			if !ok || loss.At.Before(d) || loss.At.After(upAt[owner].Add(20*time.Second)) {
				t.Errorf("%s: session %d on %s lost at %s, not during that node's replacement (drain %s, up %s): %v",
					lp.recv.user, k+1, owner, loss.At.Format("15:04:05.000"), d.Format("15:04:05.000"), upAt[owner].Format("15:04:05.000"), loss.Err)
			}
		}
		st := lp.c.Stats()
		t.Logf("%s: %d sessions, %d requests (%d GET, %d POST), %d lines dropped; failed requests: %v",
			lp.recv.user, sessions, len(reqs), st.Gets, st.Posts, st.Dropped, reqFailures)
	}
	t.Logf("long-poll requests answered across releases (session's node's release -> serving node's release): %v", cross)
	if cross["old->new"] == 0 || cross["new->old"] == 0 {
		t.Errorf("long-poll requests relayed across releases: %v; want both old->new and new->old", cross)
	}
}
