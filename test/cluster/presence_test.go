package cluster

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Presence timing of the presence tests' nodes: short, so that the
// dead-node and healing scenarios take seconds.
const (
	presenceHeartbeat = 500 * time.Millisecond
	presenceDeadAfter = 1500 * time.Millisecond
	// presenceSlack is added to every time bound, for a loaded 2-core
	// machine running the tests with -race.
	presenceSlack = 2 * time.Second
	// settleTimeout bounds every wait for the cluster's presence to match
	// the model.
	settleTimeout = 20 * time.Second
)

func startPresenceCluster(t *testing.T, nodes int, args ...string) *harness.Cluster {
	return harness.Start(t, harness.Options{Nodes: nodes, Args: append(presenceArgs(), args...)})
}

// presenceArgs are the nodes' flags for the presence timing above.
func presenceArgs() []string {
	return []string{
		"--presence-heartbeat=" + presenceHeartbeat.String(),
		"--presence-dead-after=" + presenceDeadAfter.String(),
	}
}

// ---- 1. randomised churn ----

// TestPresenceChurn: ~60 sockets join and leave three rooms on random
// nodes under random users (some users on several nodes at once) from
// three concurrent workers; afterwards every node's list of every room,
// and the merged view of a long-lived observer on every node, equal the
// model computed from the sockets still joined.
func TestPresenceChurn(t *testing.T) { testPresenceChurn(t, startPresenceCluster(t, 3)) }

// testPresenceChurn is TestPresenceChurn on a cluster of three nodes with
// presenceArgs, whose rooms room:churn-* it leaves to it.
func testPresenceChurn(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 3*waitTimeout)
	rooms := []string{"room:churn-a", "room:churn-b", "room:churn-c"}
	var obs []*observer
	for i := 1; i <= cl.N(); i++ {
		obs = append(obs, newObserver(ctx, t, cl, i, fmt.Sprintf("obs-%d", i), rooms))
	}

	type client struct {
		node  int
		user  string
		ws    *wsclient.Client
		rooms map[string]bool
	}
	urls := make([]string, cl.N()+1)
	for i := 1; i <= cl.N(); i++ {
		urls[i] = cl.Node(i).WSURL()
	}
	const workers, steps, perWorker = 3, 60, 20
	seed := uint64(time.Now().UnixNano())
	t.Logf("churn seed %d", seed)
	var (
		mu      sync.Mutex
		all     []*client
		stats   = map[string]int{}
		errs    []error
		wg      sync.WaitGroup
		started = time.Now()
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			var mine []*client
			fail := func(err error) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("worker %d: %w", w, err))
				mu.Unlock()
			}
			count := func(what string) {
				mu.Lock()
				stats[what]++
				mu.Unlock()
			}
			dial := func(node int, user string) *client {
				ws, err := wsclient.Dial(ctx, urls[node], wsclient.Options{})
				if err != nil {
					fail(err)
					return nil
				}
				c := &client{node: node, user: user, ws: ws, rooms: map[string]bool{}}
				mu.Lock()
				all = append(all, c)
				mu.Unlock()
				mine = append(mine, c)
				count("dial")
				return c
			}
			joinRoom := func(c *client, room string) bool {
				r, err := c.ws.Join(ctx, room, map[string]string{"user": c.user})
				if err != nil || r.Status != "ok" {
					fail(fmt.Errorf("%s on node %d: join %s: %v %v", c.user, c.node, room, r, err))
					return false
				}
				mu.Lock()
				c.rooms[room] = true
				mu.Unlock()
				count("join")
				return true
			}
			// A multi-device user per worker from the start: the same
			// user in the same room from two nodes.
			md := fmt.Sprintf("multi-%d", w)
			for _, node := range []int{1 + w%3, 1 + (w+1)%3} {
				if c := dial(node, md); c == nil || !joinRoom(c, rooms[w]) {
					return
				}
			}
			for range steps {
				open := slices.DeleteFunc(slices.Clone(mine), func(c *client) bool { return c.ws == nil })
				r := rng.Float64()
				switch {
				case len(open) < perWorker/2 || (r < 0.4 && len(open) < perWorker):
					user := fmt.Sprintf("u%02d", rng.IntN(15)) // 15 users across 3 workers: many on several sockets
					c := dial(1+rng.IntN(3), user)
					if c == nil || !joinRoom(c, rooms[rng.IntN(len(rooms))]) {
						return
					}
				case r < 0.6:
					c := open[rng.IntN(len(open))]
					room := rooms[rng.IntN(len(rooms))]
					if c.rooms[room] {
						continue
					}
					if !joinRoom(c, room) {
						return
					}
				case r < 0.8:
					c := open[rng.IntN(len(open))]
					joined := slices.Sorted(maps.Keys(c.rooms))
					if len(joined) == 0 {
						continue
					}
					room := joined[rng.IntN(len(joined))]
					ref, err := c.ws.Leave(room)
					if err == nil {
						_, err = c.ws.AwaitReply(ctx, ref)
					}
					if err != nil {
						fail(fmt.Errorf("%s on node %d: leave %s: %w", c.user, c.node, room, err))
						return
					}
					mu.Lock()
					delete(c.rooms, room)
					mu.Unlock()
					count("leave")
				default:
					c := open[rng.IntN(len(open))]
					_ = c.ws.Close()
					mu.Lock()
					c.ws = nil
					mu.Unlock()
					count("close")
				}
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range all {
			if c.ws != nil {
				_ = c.ws.Close()
			}
		}
	})
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}

	want := model{}
	open := 0
	for _, room := range rooms {
		want[room] = modelOf(nil, obs, nil)
	}
	for _, c := range all {
		if c.ws == nil {
			continue
		}
		select {
		case <-c.ws.Done():
			t.Fatalf("%s's socket on node %d was closed by the server: %v", c.user, c.node, c.ws.Status())
		default:
		}
		open++
		for room := range c.rooms {
			want[room][c.user]++
		}
	}
	multi := 0
	for _, room := range rooms {
		for _, n := range want[room] {
			if n > 1 {
				multi++
			}
		}
	}
	t.Logf("churn: %v in %v; %d sockets open; model %v (%d keys with several metas)",
		stats, time.Since(started).Round(time.Millisecond), open, want, multi)
	if multi == 0 {
		t.Fatalf("the churn left no user with several metas in a room; the multi-device case is not covered")
	}
	settleAll(t, cl, []int{1, 2, 3}, obs, want)
}

// ---- 2. a node killed ----

// TestPresenceNodeKilled: node 3 is killed with SIGKILL; its users leave
// the lists of nodes 1 and 2 within dead-after plus one heartbeat (plus
// slack), and the observers on nodes 1 and 2 receive leaves for exactly
// the metas of node 3's sockets, each once, and for nothing else.
func TestPresenceNodeKilled(t *testing.T) { testPresenceNodeKilled(t, startPresenceCluster(t, 3)) }

// testPresenceNodeKilled is TestPresenceNodeKilled on a cluster of three
// nodes with presenceArgs, whose room room:kill it leaves to it. Node 3
// stays dead.
func testPresenceNodeKilled(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 3*waitTimeout)
	const topic = "room:kill"
	obs := []*observer{
		newObserver(ctx, t, cl, 1, "obs-1", []string{topic}),
		newObserver(ctx, t, cl, 2, "obs-2", []string{topic}),
	}
	// "multi" is on nodes 1 and 3: one of its two metas must go.
	ms := []*member{
		{node: 1, user: "ann"}, {node: 1, user: "multi"}, {node: 2, user: "bob"}, {node: 2, user: "bea"},
		{node: 3, user: "cid"}, {node: 3, user: "cal"}, {node: 3, user: "multi"}, {node: 3, user: "cid"},
	}
	// Join one at a time, each seen by observer 1 before the next, so that
	// the phx_ref of every node-3 meta is known.
	node3Refs := map[string][]string{}
	for _, m := range ms {
		before, _ := obs[0].view(topic)
		joinMembers(ctx, t, cl, topic, []*member{m})
		var added []string
		settle(t, fmt.Sprintf("observer 1 sees %s on node %d", m.user, m.node), settleTimeout, func(context.Context) (string, error) {
			v, err := obs[0].view(topic)
			if err != nil {
				return "", err
			}
			added = nil
			for _, r := range v[m.user] {
				if !slices.Contains(before[m.user], r) {
					added = append(added, r)
				}
			}
			if len(added) != 1 {
				return fmt.Sprintf("%d new metas for %s", len(added), m.user), nil
			}
			return "", nil
		})
		if m.node == 3 {
			node3Refs[m.user] = append(node3Refs[m.user], added[0])
		}
	}
	settleAll(t, cl, []int{1, 2, 3}, obs, model{topic: modelOf(ms, obs, nil)})

	mark := []int{obs[0].diffCount(topic), obs[1].diffCount(topic)}
	asked := time.Now()
	cl.Kill(3)
	killed := time.Now()
	t.Logf("docker kill of node 3 returned after %v", killed.Sub(asked).Round(time.Millisecond))
	want := model{topic: modelOf(ms, obs, func(m *member) bool { return m.node == 3 })}
	settle(t, "lists on nodes 1 and 2 after the kill", settleTimeout, func(ctx context.Context) (string, error) {
		return checkLists(ctx, cl, []int{1, 2}, want)
	})
	gone := time.Since(killed)
	bound := presenceDeadAfter + presenceHeartbeat + presenceSlack
	t.Logf("node 3's users left the lists %v after the kill (dead-after %v, heartbeat %v, bound %v)", gone.Round(time.Millisecond), presenceDeadAfter, presenceHeartbeat, bound)
	if gone > bound {
		t.Errorf("node 3's users left the lists %v after the kill, more than dead-after + heartbeat + slack = %v", gone, bound)
	}
	settle(t, "observers' merged views after the kill", settleTimeout, func(context.Context) (string, error) {
		return checkViews(obs, want)
	})
	// Let another dead-after and heartbeat pass, in which a second reaper
	// or a repeated leave would show.
	time.Sleep(presenceDeadAfter + presenceHeartbeat)

	for i, o := range obs {
		left := map[string][]string{}
		joins := 0
		// The probes that read the lists above come and go in this
		// topic too; whether a probe's join and leave fall into one
		// coalescing window (and cancel) or into two is timing.
		for _, d := range o.diffsSince(topic, mark[i]) {
			for k, refs := range d.Leaves {
				if !isProbe(k) {
					left[k] = append(left[k], refs...)
				}
			}
			for k, refs := range d.Joins {
				if isProbe(k) {
					continue
				}
				joins++
				t.Errorf("observer %s got a join for %s %v after the kill", o.name, k, refs)
			}
		}
		wantLeft := map[string][]string{}
		for k, refs := range node3Refs {
			wantLeft[k] = slices.Sorted(slices.Values(refs))
		}
		for k := range left {
			slices.Sort(left[k])
		}
		if !maps.EqualFunc(left, wantLeft, slices.Equal[[]string]) {
			t.Errorf("observer %s: leaves after the kill %v, want node 3's metas once each: %v", o.name, left, wantLeft)
		}
	}
	if diff, err := checkViews(obs, want); err != nil || diff != "" {
		t.Errorf("observers' views later: %s %v", diff, err)
	}
}

// ---- 3. a node cut off from Redis ----

// TestPresenceNodePartitioned: node 3's container is disconnected from the
// cluster's network (no Redis, no peers) for a while: its users leave the
// lists and the views on nodes 1 and 2 after dead-after (plus a heartbeat
// and slack); once it is reconnected they come back, each user with
// exactly as many metas as sockets, on every node and in every view, and
// it stays so for a few more heartbeats.
func TestPresenceNodePartitioned(t *testing.T) {
	cl := startPresenceCluster(t, 3)
	ctx := timeout(t, 4*waitTimeout)
	const topic = "room:cut"
	// Node 3's users connect through a network of node 3's own, which the
	// cut leaves alone: detaching a container from a network drops the
	// port published through it, and with it the sockets behind it, which
	// would make its users leave for another reason.
	side := cl.AttachSideNetwork(3)
	obs := []*observer{
		newObserver(ctx, t, cl, 1, "obs-1", []string{topic}),
		newObserver(ctx, t, cl, 2, "obs-2", []string{topic}),
	}
	ms := []*member{
		{node: 1, user: "ann"}, {node: 1, user: "multi"}, {node: 2, user: "bob"},
		{node: 3, user: "cid", url: side}, {node: 3, user: "cal", url: side}, {node: 3, user: "multi", url: side}, {node: 3, user: "cal", url: side},
	}
	joinMembers(ctx, t, cl, topic, ms)
	all := model{topic: modelOf(ms, obs, nil)}
	settleAll(t, cl, []int{1, 2, 3}, obs, all)

	cl.Disconnect(3)
	cut := time.Now()
	without := model{topic: modelOf(ms, obs, func(m *member) bool { return m.node == 3 })}
	settle(t, "lists on nodes 1 and 2 while node 3 is cut off", settleTimeout, func(ctx context.Context) (string, error) {
		return checkLists(ctx, cl, []int{1, 2}, without)
	})
	gone := time.Since(cut)
	bound := presenceDeadAfter + presenceHeartbeat + presenceSlack
	t.Logf("node 3's users left the lists %v after the cut (bound %v)", gone.Round(time.Millisecond), bound)
	if gone > bound {
		t.Errorf("node 3's users left the lists %v after the cut, more than dead-after + heartbeat + slack = %v", gone, bound)
	}
	settle(t, "observers' merged views while node 3 is cut off", settleTimeout, func(context.Context) (string, error) {
		return checkViews(obs, without)
	})

	for _, m := range ms {
		select {
		case <-m.ws.Done():
			t.Fatalf("%s's socket on node %d ended during the cut: %v", m.user, m.node, m.ws.Status())
		default:
		}
	}

	cl.Reconnect(3)
	took := settle(t, "lists on nodes 1 and 2 after the heal", settleTimeout, func(ctx context.Context) (string, error) {
		return checkLists(ctx, cl, []int{1, 2}, all)
	})
	t.Logf("node 3's users were back in the lists %v after the reconnect", took.Round(time.Millisecond))
	cl.AwaitReady(3, 200, settleTimeout)
	settleAll(t, cl, []int{1, 2, 3}, obs, all)
	for _, m := range ms {
		select {
		case <-m.ws.Done():
			t.Errorf("%s's socket on node %d ended: %v", m.user, m.node, m.ws.Status())
		default:
		}
	}
	// A few more heartbeats, in which a second re-assertion would
	// duplicate metas.
	// The views first: a lists check joins a probe on the topic, whose
	// leave reaches the observers a coalescing window after it returns.
	time.Sleep(3 * presenceHeartbeat)
	if diff, err := checkViews(obs, all); err != nil || diff != "" {
		t.Errorf("observers' views %v later: %s %v", 3*presenceHeartbeat, diff, err)
	}
	if diff, err := checkLists(ctx, cl, []int{1, 2, 3}, all); err != nil || diff != "" {
		t.Errorf("lists %v later: %s %v", 3*presenceHeartbeat, diff, err)
	}
}

// ---- 4. Redis restarted empty ----

// TestPresenceRedisRestartedEmpty: Redis is stopped and started again
// (without persistence, so empty); within about one heartbeat (plus slack)
// of Redis answering again every node's list is the truth again, and so
// are the observers' merged views.
//
// The room keeps no history: with one, Redis restarted empty changes its
// epoch, every channel of it fails with phx_error so that its client
// learns ("epoch changed", TestHistoryRecovery) and rejoins, as phoenix.js
// does and these clients do not. What is checked here is that presence
// heals without any rejoin.
func TestPresenceRedisRestartedEmpty(t *testing.T) {
	cl := startPresenceCluster(t, 3, "--history=room:*=0")
	ctx := timeout(t, 3*waitTimeout)
	const topic = "room:redis"
	var obs []*observer
	for i := 1; i <= cl.N(); i++ {
		obs = append(obs, newObserver(ctx, t, cl, i, fmt.Sprintf("obs-%d", i), []string{topic}))
	}
	ms := []*member{
		{node: 1, user: "ann"}, {node: 1, user: "multi"}, {node: 2, user: "bob"}, {node: 2, user: "multi"},
		{node: 3, user: "cid"}, {node: 3, user: "multi"}, {node: 3, user: "cal"},
	}
	joinMembers(ctx, t, cl, topic, ms)
	want := model{topic: modelOf(ms, obs, nil)}
	settleAll(t, cl, []int{1, 2, 3}, obs, want)

	cl.StopRedis()
	cl.StartRedis() // returns once Redis answers PING
	back := time.Now()
	settle(t, "lists after the Redis restart", settleTimeout, func(ctx context.Context) (string, error) {
		return checkLists(ctx, cl, []int{1, 2, 3}, want)
	})
	took := time.Since(back)
	bound := presenceHeartbeat + presenceSlack
	t.Logf("lists were the truth again %v after Redis answered (heartbeat %v, bound %v)", took.Round(time.Millisecond), presenceHeartbeat, bound)
	if took > bound {
		t.Errorf("lists were the truth again only %v after Redis answered, more than a heartbeat + slack = %v", took, bound)
	}
	settle(t, "observers' merged views after the Redis restart", settleTimeout, func(context.Context) (string, error) {
		return checkViews(obs, want)
	})
	for _, m := range ms {
		select {
		case <-m.ws.Done():
			t.Errorf("%s's socket on node %d ended: %v", m.user, m.node, m.ws.Status())
		default:
		}
	}
}
