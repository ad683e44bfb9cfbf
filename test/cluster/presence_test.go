package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

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

// ---- presence payloads and the JS Presence merge (PROTOCOL.md §7.4) ----

// presenceMap is a presence_state payload, or one side of a diff, reduced
// to the phx_refs of each key's metas, in order.
type presenceMap map[string][]string

func (p *presenceMap) UnmarshalJSON(data []byte) error {
	var raw map[string]struct {
		Metas []struct {
			Ref string `json:"phx_ref"`
		} `json:"metas"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	*p = presenceMap{}
	for k, e := range raw {
		refs := make([]string, 0, len(e.Metas))
		for _, m := range e.Metas {
			refs = append(refs, m.Ref)
		}
		(*p)[k] = refs
	}
	return nil
}

type presenceDiff struct {
	Joins  presenceMap `json:"joins"`
	Leaves presenceMap `json:"leaves"`
}

// applyDiff applies joins, then leaves, as phoenix.js's Presence.syncDiff
// does: a joined key's metas become the previous metas whose phx_ref is
// not among the joined ones followed by the joined ones; a leave removes
// the listed refs and drops the key when none remain; leaves of unknown
// keys are ignored.
func applyDiff(state presenceMap, d presenceDiff) {
	for key, joined := range d.Joins {
		var merged []string
		for _, ref := range state[key] {
			if !slices.Contains(joined, ref) {
				merged = append(merged, ref)
			}
		}
		state[key] = append(merged, joined...)
	}
	for key, left := range d.Leaves {
		cur, ok := state[key]
		if !ok {
			continue
		}
		cur = slices.DeleteFunc(slices.Clone(cur), func(ref string) bool { return slices.Contains(left, ref) })
		if len(cur) == 0 {
			delete(state, key)
		} else {
			state[key] = cur
		}
	}
}

// syncState applies a presence_state as phoenix.js's Presence.syncState
// does: the differences between the view and the new state, as a diff.
func syncState(state, next presenceMap) {
	d := presenceDiff{Joins: presenceMap{}, Leaves: presenceMap{}}
	for key, cur := range state {
		if _, ok := next[key]; !ok {
			d.Leaves[key] = cur
		}
	}
	for key, refs := range next {
		cur, ok := state[key]
		if !ok {
			d.Joins[key] = refs
			continue
		}
		var joined, left []string
		for _, r := range refs {
			if !slices.Contains(cur, r) {
				joined = append(joined, r)
			}
		}
		for _, r := range cur {
			if !slices.Contains(refs, r) {
				left = append(left, r)
			}
		}
		if len(joined) > 0 {
			d.Joins[key] = joined
		}
		if len(left) > 0 {
			d.Leaves[key] = left
		}
	}
	applyDiff(state, d)
}

// counts reduces a presence map to the number of metas per key, and says
// which keys carry a phx_ref twice.
func counts(p presenceMap) (map[string]int, []string) {
	n := map[string]int{}
	var dups []string
	for k, refs := range p {
		n[k] = len(refs)
		seen := map[string]bool{}
		for _, r := range refs {
			if seen[r] {
				dups = append(dups, fmt.Sprintf("%s/%s", k, r))
			}
			seen[r] = true
		}
	}
	return n, dups
}

// mismatch describes how got differs from want ("" when equal).
func mismatch(want, got map[string]int) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			fmt.Fprintf(&b, " %s: %d metas, want %d;", k, got[k], want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, " %s: %d metas, want none;", k, got[k])
		}
	}
	return b.String()
}

// ---- long-lived observers ----

// observer is a socket that stays joined to some rooms and merges every
// presence_state and presence_diff it receives, in order, into one view
// per room, as the JS Presence class would. It also keeps every diff.
type observer struct {
	name string
	ws   *wsclient.Client

	mu     sync.Mutex
	views  map[string]presenceMap    // nil per topic until a state arrived
	queued map[string][]presenceDiff // diffs before the first state
	diffs  map[string][]presenceDiff // every diff received, in order
	states map[string]int
	err    error
}

// newObserver connects to node as user and joins topics, then merges in
// the background until the test ends.
func newObserver(ctx context.Context, t *testing.T, cl *harness.Cluster, node int, user string, topics []string) *observer {
	t.Helper()
	ws := cl.Dial(ctx, node, nil)
	for _, topic := range topics {
		r, err := ws.Join(ctx, topic, map[string]string{"user": user})
		if err != nil || r.Status != "ok" {
			t.Fatalf("observer %s: join %s: %v %v", user, topic, r, err)
		}
	}
	o := &observer{name: user, ws: ws, views: map[string]presenceMap{}, queued: map[string][]presenceDiff{},
		diffs: map[string][]presenceDiff{}, states: map[string]int{}}
	octx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go o.run(octx, topics, done)
	t.Cleanup(func() { cancel(); <-done })
	return o
}

func (o *observer) run(ctx context.Context, topics []string, done chan struct{}) {
	defer close(done)
	isPresence := func(m wsclient.Message) bool {
		return m.Err == nil && slices.Contains(topics, m.Topic) && (m.Event == "presence_state" || m.Event == "presence_diff")
	}
	for {
		m, err := o.ws.Await(ctx, isPresence)
		if err != nil {
			o.mu.Lock()
			if ctx.Err() == nil {
				o.err = err
			}
			o.mu.Unlock()
			return
		}
		o.mu.Lock()
		switch m.Event {
		case "presence_state":
			var p presenceMap
			if err := json.Unmarshal(m.Payload, &p); err != nil {
				o.err = fmt.Errorf("undecodable presence_state %s: %w", m, err)
				break
			}
			o.states[m.Topic]++
			v := o.views[m.Topic]
			if v == nil {
				v = presenceMap{}
				o.views[m.Topic] = v
			}
			syncState(v, p)
			for _, d := range o.queued[m.Topic] {
				applyDiff(v, d)
			}
			delete(o.queued, m.Topic)
		case "presence_diff":
			var d presenceDiff
			if err := json.Unmarshal(m.Payload, &d); err != nil {
				o.err = fmt.Errorf("undecodable presence_diff %s: %w", m, err)
				break
			}
			o.diffs[m.Topic] = append(o.diffs[m.Topic], d)
			if v := o.views[m.Topic]; v != nil {
				applyDiff(v, d)
			} else {
				o.queued[m.Topic] = append(o.queued[m.Topic], d)
			}
		}
		o.mu.Unlock()
	}
}

// view returns a copy of the merged view of topic (nil before a state).
func (o *observer) view(topic string) (presenceMap, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return nil, fmt.Errorf("observer %s: %w", o.name, o.err)
	}
	v := o.views[topic]
	if v == nil {
		return nil, nil
	}
	cp := presenceMap{}
	for k, refs := range v {
		cp[k] = slices.Clone(refs)
	}
	return cp, nil
}

// diffCount is how many diffs of topic the observer has received.
func (o *observer) diffCount(topic string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.diffs[topic])
}

// diffsSince returns the diffs of topic from index i on.
func (o *observer) diffsSince(topic string, i int) []presenceDiff {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.diffs[topic][i:])
}

// ---- fresh observers: a node's presence list ----

var probeSeq struct {
	sync.Mutex
	n int
}

// listOn joins topics on node with a fresh socket under a fresh user
// "probe-<n>" and returns, per topic, the presence_state it receives,
// without the probe's own key (which must be there once). The socket is
// closed before it returns.
func listOn(ctx context.Context, cl *harness.Cluster, node int, topics []string) (map[string]presenceMap, error) {
	probeSeq.Lock()
	probeSeq.n++
	user := fmt.Sprintf("probe-%d", probeSeq.n)
	probeSeq.Unlock()
	ws, err := wsclient.Dial(ctx, cl.Node(node).WSURL(), wsclient.Options{})
	if err != nil {
		return nil, fmt.Errorf("probe on node %d: %w", node, err)
	}
	defer ws.Close()
	out := map[string]presenceMap{}
	for _, topic := range topics {
		r, err := ws.Join(ctx, topic, map[string]string{"user": user})
		if err != nil || r.Status != "ok" {
			return nil, fmt.Errorf("probe on node %d: join %s: %v %v", node, topic, r, err)
		}
		m, err := ws.Await(ctx, wsclient.IsEvent(topic, "presence_state"))
		if err != nil {
			return nil, fmt.Errorf("probe on node %d: presence_state of %s: %w", node, topic, err)
		}
		var p presenceMap
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			return nil, fmt.Errorf("probe on node %d: undecodable presence_state %s: %w", node, m, err)
		}
		if n := len(p[user]); n != 1 {
			return nil, fmt.Errorf("probe on node %d: its own key %s has %d metas in the presence_state of %s, want 1", node, user, n, topic)
		}
		// Other probes' sockets are closed before this one joins, but their
		// leaves reach Redis a coalescing window later: not what is checked.
		maps.DeleteFunc(p, func(k string, _ []string) bool { return isProbe(k) })
		out[topic] = p
	}
	return out, nil
}

// isProbe tells listOn's users, whose joins and leaves every observer of
// the topic also receives, from the users a test placed.
func isProbe(key string) bool { return strings.HasPrefix(key, "probe-") }

// model is the expected presence of each topic: metas per key.
type model map[string]map[string]int

// checkLists compares the lists of topics on nodes with want; "" when
// all are equal.
func checkLists(ctx context.Context, cl *harness.Cluster, nodes []int, want model) (string, error) {
	topics := slices.Sorted(maps.Keys(want))
	var b strings.Builder
	for _, node := range nodes {
		lists, err := listOn(ctx, cl, node, topics)
		if err != nil {
			return "", err
		}
		for _, topic := range topics {
			got, dups := counts(lists[topic])
			if len(dups) > 0 {
				fmt.Fprintf(&b, "node %d %s: duplicate phx_refs %v; ", node, topic, dups)
			}
			if d := mismatch(want[topic], got); d != "" {
				fmt.Fprintf(&b, "node %d %s:%s ", node, topic, d)
			}
		}
	}
	return b.String(), nil
}

// checkViews compares the observers' merged views with want.
func checkViews(obs []*observer, want model) (string, error) {
	var b strings.Builder
	for _, o := range obs {
		for _, topic := range slices.Sorted(maps.Keys(want)) {
			v, err := o.view(topic)
			if err != nil {
				return "", err
			}
			if v == nil {
				fmt.Fprintf(&b, "observer %s %s: no presence_state yet; ", o.name, topic)
				continue
			}
			got, dups := counts(v)
			if len(dups) > 0 {
				fmt.Fprintf(&b, "observer %s %s: duplicate phx_refs %v; ", o.name, topic, dups)
			}
			if d := mismatch(want[topic], got); d != "" {
				fmt.Fprintf(&b, "observer %s %s:%s ", o.name, topic, d)
			}
		}
	}
	return b.String(), nil
}

// settle polls check every 100 ms until it reports no difference,
// failing the test with the last difference after timeout. It returns how
// long that took.
func settle(t *testing.T, what string, timeout time.Duration, check func(context.Context) (string, error)) time.Duration {
	t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		diff, err := check(ctx)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if diff == "" {
			took := time.Since(began)
			t.Logf("%s: equal to the model after %v", what, took.Round(time.Millisecond))
			return took
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still differs from the model after %v: %s", what, timeout, diff)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// settleAll waits until the lists on nodes, then the views of obs, equal
// want. The lists are checked first: the probes that read them show up in
// the observers' views until their leaves arrive, which the second wait
// lets happen.
func settleAll(t *testing.T, cl *harness.Cluster, nodes []int, obs []*observer, want model) time.Duration {
	t.Helper()
	took := settle(t, fmt.Sprintf("lists on nodes %v", nodes), settleTimeout, func(ctx context.Context) (string, error) {
		return checkLists(ctx, cl, nodes, want)
	})
	settle(t, "observers' merged views", settleTimeout, func(context.Context) (string, error) {
		return checkViews(obs, want)
	})
	return took
}

// member is one socket in one room.
type member struct {
	node int
	user string
	url  string // where to connect; "" means the node's published port
	ws   *wsclient.Client
}

// joinMembers connects each member to its node and joins topic as its
// user, in order.
func joinMembers(ctx context.Context, t *testing.T, cl *harness.Cluster, topic string, ms []*member) {
	t.Helper()
	for _, m := range ms {
		if m.url == "" {
			m.ws = cl.Dial(ctx, m.node, nil)
		} else {
			ws, err := wsclient.Dial(ctx, m.url, wsclient.Options{})
			if err != nil {
				t.Fatalf("%s on node %d: connecting to %s: %v", m.user, m.node, m.url, err)
			}
			t.Cleanup(func() { _ = ws.Close() })
			m.ws = ws
		}
		r, err := m.ws.Join(ctx, topic, map[string]string{"user": m.user})
		if err != nil || r.Status != "ok" {
			t.Fatalf("%s on node %d: join %s: %v %v", m.user, m.node, topic, r, err)
		}
	}
}

// modelOf counts the metas per user of the members not excluded, plus one
// per observer.
func modelOf(ms []*member, obs []*observer, exclude func(*member) bool) map[string]int {
	want := map[string]int{}
	for _, m := range ms {
		if exclude == nil || !exclude(m) {
			want[m.user]++
		}
	}
	for _, o := range obs {
		want[o.name]++
	}
	return want
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
	time.Sleep(3 * presenceHeartbeat)
	if diff, err := checkLists(ctx, cl, []int{1, 2, 3}, all); err != nil || diff != "" {
		t.Errorf("lists %v later: %s %v", 3*presenceHeartbeat, diff, err)
	}
	if diff, err := checkViews(obs, all); err != nil || diff != "" {
		t.Errorf("observers' views %v later: %s %v", 3*presenceHeartbeat, diff, err)
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

// onFailureRedis runs dump, when t has failed, with a client of the
// cluster's Redis and 5 s to read what Redis held at the end.
func onFailureRedis(t *testing.T, cl *harness.Cluster, dump func(ctx context.Context, rc *goredis.Client)) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		rc := goredis.NewClient(&goredis.Options{Addr: cl.RedisAddr()})
		defer rc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dump(ctx, rc)
	})
}

// logRedisPresenceOnFailure logs, if the test fails, what Redis holds of
// the cluster's presence: the nodes' heartbeats (against Redis's clock),
// each node's bookkeeping keys, and how many fields each node has in the
// given topics' hashes. A list that lacks a node's users shows here
// whether Redis lost the fields or a node stopped counting as alive.
func logRedisPresenceOnFailure(t *testing.T, cl *harness.Cluster, topics ...string) {
	onFailureRedis(t, cl, func(ctx context.Context, rc *goredis.Client) {
		now, _ := rc.Time(ctx).Result()
		nodes, _ := rc.HGetAll(ctx, "channelsd:nodes").Result()
		keys, _ := rc.Keys(ctx, "channelsd:n:*").Result()
		t.Logf("redis: time %d ms, heartbeats %v, node keys %v", now.UnixMilli(), nodes, keys)
		for _, topic := range topics {
			fields, _ := rc.HKeys(ctx, "channelsd:p:"+topic).Result()
			per := map[string]int{}
			for _, f := range fields {
				node, _, _ := strings.Cut(f, "/")
				per[node]++
			}
			t.Logf("redis: %s fields per node %v", topic, per)
		}
	})
}
