package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/test/redistest"
)

// observer is a client's view of a topic on one node: it records the
// presence events it receives, in order.
type observer struct {
	id   string
	mu   sync.Mutex
	msgs []*pubsub.Message
}

func (o *observer) SubscriberID() string { return o.id }
func (o *observer) Deliver(m *pubsub.Message) {
	o.mu.Lock()
	o.msgs = append(o.msgs, m)
	o.mu.Unlock()
}

func (o *observer) diffs() []presence.Diff {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []presence.Diff
	for _, m := range o.msgs {
		if m.Event != "presence_diff" {
			continue
		}
		var d presence.Diff
		if err := json.Unmarshal(m.Payload, &d); err != nil {
			panic(err)
		}
		out = append(out, d)
	}
	return out
}

// observe subscribes a new observer to topic on n and takes the initial
// List, as a joining channel does (subscribe, then presence_state).
func observe(t *testing.T, n *testNode, topic string) (*observer, presence.State) {
	t.Helper()
	o := &observer{id: fmt.Sprintf("obs-%s-%s-%d", n.id, topic, rand.Int())}
	if err := n.ps.Subscribe(topic, o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.ps.Unsubscribe(topic, o) })
	st, err := n.tr.List(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	return o, st
}

// --- the JS Presence class merge rules (PROTOCOL.md §7.4) ---

type jsMeta = map[string]any
type jsState map[string][]jsMeta

func ref(m jsMeta) string { s, _ := m["phx_ref"].(string); return s }

func toJS(s presence.State) jsState {
	out := jsState{}
	for k, e := range s {
		for _, raw := range e.Metas {
			var m jsMeta
			if err := json.Unmarshal(raw, &m); err != nil {
				panic(err)
			}
			out[k] = append(out[k], m)
		}
	}
	return out
}

func refSet(ms []jsMeta) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		out[ref(m)] = true
	}
	return out
}

// syncDiff is Presence.syncDiff: joins first, then leaves.
func syncDiff(state jsState, joins, leaves jsState) {
	for key, joined := range joins {
		cur, had := state[key]
		next := slices.Clone(joined)
		if had {
			jr := refSet(next)
			var kept []jsMeta
			for _, m := range cur {
				if !jr[ref(m)] {
					kept = append(kept, m)
				}
			}
			next = append(kept, next...)
		}
		state[key] = next
	}
	for key, left := range leaves {
		cur, had := state[key]
		if !had {
			continue
		}
		lr := refSet(left)
		var kept []jsMeta
		for _, m := range cur {
			if !lr[ref(m)] {
				kept = append(kept, m)
			}
		}
		if len(kept) == 0 {
			delete(state, key)
		} else {
			state[key] = kept
		}
	}
}

// syncState is Presence.syncState.
func syncState(state jsState, next jsState) {
	joins, leaves := jsState{}, jsState{}
	for key, cur := range state {
		if _, ok := next[key]; !ok {
			leaves[key] = cur
		}
	}
	for key, nm := range next {
		cur, ok := state[key]
		if !ok {
			joins[key] = nm
			continue
		}
		nr, cr := refSet(nm), refSet(cur)
		var j, l []jsMeta
		for _, m := range nm {
			if !cr[ref(m)] {
				j = append(j, m)
			}
		}
		for _, m := range cur {
			if !nr[ref(m)] {
				l = append(l, m)
			}
		}
		if len(j) > 0 {
			joins[key] = j
		}
		if len(l) > 0 {
			leaves[key] = l
		}
	}
	syncDiff(state, joins, leaves)
}

// clientView replays what a JS client would see: the state, then every
// diff the observer received (diffs that arrived first are queued by the
// client and applied after the state, as here).
func clientView(o *observer, initial presence.State) jsState {
	st := jsState{}
	syncState(st, toJS(initial))
	for _, d := range o.diffs() {
		syncDiff(st, toJS(d.Joins), toJS(d.Leaves))
	}
	return st
}

// canon reduces a view to key -> sorted phx_refs.
func canon(s jsState) map[string][]string {
	out := map[string][]string{}
	for k, ms := range s {
		for _, m := range ms {
			out[k] = append(out[k], ref(m))
		}
		sort.Strings(out[k])
	}
	return out
}

func listCanon(t *testing.T, n *testNode, topic string) map[string][]string {
	t.Helper()
	st, err := n.tr.List(context.Background(), topic)
	if err != nil {
		t.Fatalf("List on %s: %v", n.id, err)
	}
	return canon(toJS(st))
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func meta(s string) json.RawMessage { return json.RawMessage(s) }

func track(t *testing.T, n *testNode, topic, owner, key, m string) string {
	t.Helper()
	r, err := n.tr.Track(context.Background(), topic, owner, key, meta(m))
	if err != nil {
		t.Fatalf("Track on %s: %v", n.id, err)
	}
	return r
}

// --- tests ---

func TestTrackListAndDiffAcrossNodes(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	obsB, initB := observe(t, b, "room:1")
	if len(initB) != 0 {
		t.Fatalf("initial state %v", initB)
	}
	r := track(t, a, "room:1", "ch1", "42", `{"device":"web"}`)

	want := map[string][]string{"42": {r}}
	if got := listCanon(t, a, "room:1"); !reflect.DeepEqual(got, want) {
		t.Fatalf("List on a right after Track = %v, want %v", got, want)
	}
	eventually(t, 2*time.Second, "b to list a's entry", func() bool { return reflect.DeepEqual(listCanon(t, b, "room:1"), want) })
	eventually(t, 2*time.Second, "b's subscriber to get the diff", func() bool { return len(obsB.diffs()) == 1 })

	obsB.mu.Lock()
	raw := obsB.msgs[0].Payload
	obsB.mu.Unlock()
	var wire map[string]json.RawMessage
	if err := json.Unmarshal(raw, &wire); err != nil {
		t.Fatal(err)
	}
	if string(wire["leaves"]) != "{}" {
		t.Errorf("leaves = %s, want {}", wire["leaves"])
	}
	var joins map[string]struct {
		Metas []map[string]any `json:"metas"`
	}
	if err := json.Unmarshal(wire["joins"], &joins); err != nil {
		t.Fatalf("joins %s: %v", wire["joins"], err)
	}
	if m := joins["42"].Metas; len(m) != 1 || m[0]["device"] != "web" || m[0]["phx_ref"] != r {
		t.Errorf("joins = %s", wire["joins"])
	}
	if _, err := a.tr.Track(context.Background(), "room:1", "ch1", "42", meta(`{}`)); err != presence.ErrAlreadyTracked {
		t.Errorf("second Track: %v, want ErrAlreadyTracked", err)
	}
	if _, err := a.tr.Track(context.Background(), "room:1", "ch9", "42", meta(`[1]`)); err != presence.ErrNotObject {
		t.Errorf("Track with an array meta: %v, want ErrNotObject", err)
	}
	if _, err := a.tr.Update(context.Background(), "room:1", "ch2", "42", meta(`{}`)); err != presence.ErrNotTracked {
		t.Errorf("Update of an untracked key: %v, want ErrNotTracked", err)
	}
}

func TestUpdateCarriesPrevRef(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	obsB, _ := observe(t, b, "room:1")
	r1 := track(t, a, "room:1", "ch1", "42", `{"status":"here"}`)
	eventually(t, 2*time.Second, "join diff", func() bool { return len(obsB.diffs()) == 1 })
	r2, err := a.tr.Update(context.Background(), "room:1", "ch1", "42", meta(`{"status":"away"}`))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "update diff", func() bool { return len(obsB.diffs()) == 2 })
	d := toJS(obsB.diffs()[1].Joins)
	l := toJS(obsB.diffs()[1].Leaves)
	if len(d["42"]) != 1 || ref(d["42"][0]) != r2 || d["42"][0]["phx_ref_prev"] != r1 || d["42"][0]["status"] != "away" {
		t.Errorf("update joins = %v", d)
	}
	if len(l["42"]) != 1 || ref(l["42"][0]) != r1 {
		t.Errorf("update leaves = %v, want the old ref %s", l, r1)
	}
	want := map[string][]string{"42": {r2}}
	eventually(t, 2*time.Second, "b's list to show the update", func() bool { return reflect.DeepEqual(listCanon(t, b, "room:1"), want) })
}

func TestMultiDevice(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	r1 := track(t, a, "room:1", "sock1", "42", `{"device":"web"}`)
	r2 := track(t, b, "room:1", "sock2", "42", `{"device":"ios"}`)
	r3 := track(t, a, "room:1", "sock3", "42", `{"device":"tab"}`)
	want := map[string][]string{"42": {r1, r2, r3}}
	sort.Strings(want["42"])
	for _, n := range []*testNode{a, b} {
		eventually(t, 2*time.Second, "three metas under one key on "+n.id, func() bool { return reflect.DeepEqual(listCanon(t, n, "room:1"), want) })
	}
	if err := a.tr.UntrackAll(context.Background(), "room:1", "sock1"); err != nil {
		t.Fatal(err)
	}
	want = map[string][]string{"42": {r2, r3}}
	sort.Strings(want["42"])
	eventually(t, 2*time.Second, "one meta gone on b", func() bool { return reflect.DeepEqual(listCanon(t, b, "room:1"), want) })
}

func TestGracefulClose(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	obsA, _ := observe(t, a, "room:1")
	track(t, a, "room:1", "x", "1", `{}`)
	rb := track(t, b, "room:1", "y", "2", `{}`)
	eventually(t, 2*time.Second, "a to see b's entry", func() bool { return len(listCanon(t, a, "room:1")) == 2 })
	if err := b.tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := listCanon(t, a, "room:1"); len(got) != 1 || got["2"] != nil {
		t.Fatalf("a's List right after b closed = %v", got)
	}
	eventually(t, 2*time.Second, "the leave diff on a", func() bool {
		for _, d := range obsA.diffs() {
			if l := toJS(d.Leaves)["2"]; len(l) == 1 && ref(l[0]) == rb {
				return true
			}
		}
		return false
	})
	if _, err := b.tr.Track(context.Background(), "room:1", "z", "3", meta(`{}`)); err != presence.ErrClosed {
		t.Errorf("Track after Close: %v", err)
	}
}

func TestDeadNodeReapedOnce(t *testing.T) {
	s := startRedis(t)
	a, b, c := newNode(t, s, "a"), newNode(t, s, "b"), newNode(t, s, "c")
	topics := []string{"room:1", "room:2"}
	obs := map[string]*observer{}
	for _, n := range []*testNode{a, b} {
		for _, tp := range topics {
			obs[n.id+tp], _ = observe(t, n, tp)
		}
	}
	for _, tp := range topics {
		track(t, a, tp, "a1", "alice", `{}`)
		track(t, c, tp, "c1", "carol", `{}`)
		track(t, c, tp, "c2", "carol", `{}`)
	}
	for _, tp := range topics {
		eventually(t, 2*time.Second, "a to see carol", func() bool { return len(listCanon(t, a, tp)["carol"]) == 2 })
	}
	c.tr.kill()
	killed := time.Now()
	for _, tp := range topics {
		eventually(t, 5*time.Second, "a's List to drop the dead node", func() bool { return listCanon(t, a, tp)["carol"] == nil })
	}
	// Hidden no earlier than DeadAfter after the node's last heartbeat,
	// which came at most a heartbeat before the kill (less a little for
	// Redis's millisecond clock).
	if el := time.Since(killed); el < testDeadAfter-testHeartbeat-10*time.Millisecond {
		t.Errorf("dead node hidden after %s, before DeadAfter", el)
	}
	leaveDiffs := func(o *observer) int {
		n := 0
		for _, d := range o.diffs() {
			if l := toJS(d.Leaves)["carol"]; len(l) > 0 {
				if len(l) != 2 {
					t.Errorf("leave diff with %d carol metas, want 2 in one diff", len(l))
				}
				n++
			}
		}
		return n
	}
	for k, o := range obs {
		eventually(t, 5*time.Second, "leave diff on "+k, func() bool { return leaveDiffs(o) >= 1 })
	}
	// Let several more heartbeats pass: nobody reaps twice.
	time.Sleep(4 * testHeartbeat)
	for k, o := range obs {
		if n := leaveDiffs(o); n != 1 {
			t.Errorf("%s saw %d leave diffs for the dead node, want 1", k, n)
		}
	}
	rc := client(t, s)
	if n, _ := rc.HExists(context.Background(), "test:nodes", "c").Result(); n {
		t.Error("dead node still in the nodes hash")
	}
	for _, tp := range topics {
		fields, _ := rc.HKeys(context.Background(), "test:p:"+tp).Result()
		if len(fields) != 1 {
			t.Errorf("%s fields after reap: %v", tp, fields)
		}
	}
}

func TestFlushAllHeals(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	track(t, a, "room:1", "a1", "alice", `{}`)
	track(t, b, "room:1", "b1", "bob", `{}`)
	track(t, b, "room:2", "b1", "bob", `{}`)
	want1 := map[string][]string{}
	eventually(t, 2*time.Second, "both entries", func() bool {
		want1 = listCanon(t, a, "room:1")
		return len(want1) == 2
	})
	want2 := listCanon(t, b, "room:2")
	if err := client(t, s).FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	flushed := time.Now()
	eventually(t, 5*time.Second, "entries re-asserted", func() bool {
		return reflect.DeepEqual(listCanon(t, a, "room:1"), want1) &&
			reflect.DeepEqual(listCanon(t, b, "room:1"), want1) &&
			reflect.DeepEqual(listCanon(t, a, "room:2"), want2)
	})
	// Within one heartbeat, plus scheduling slack.
	if el := time.Since(flushed); el > 2*testHeartbeat+200*time.Millisecond {
		t.Errorf("healed after %s, want about one heartbeat (%s)", el, testHeartbeat)
	}
}

func TestCoalescing(t *testing.T) {
	s := startRedis(t)
	// 1,000 tracks at once can hold a heartbeat back past the tests'
	// short DeadAfter on a loaded machine; a reap then (healed by repairs,
	// TestFalselyReapedNodeHeals) is not what this test counts.
	patient := func(o *Options) { o.DeadAfter = 30 * testDeadAfter }
	a, b := newNode(t, s, "a", patient), newNode(t, s, "b", patient)
	obsA, initA := observe(t, a, "room:big")
	obsB, initB := observe(t, b, "room:big")
	const n = 1000
	var wg sync.WaitGroup
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 10 {
				if _, err := a.tr.Track(context.Background(), "room:big", fmt.Sprint("o", i), fmt.Sprint("u", i), meta(`{}`)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	eventually(t, 5*time.Second, "b to list all", func() bool { return len(listCanon(t, b, "room:big")) == n })
	for _, c := range []struct {
		o    *observer
		init presence.State
	}{{obsA, initA}, {obsB, initB}} {
		eventually(t, 5*time.Second, "clients to see all", func() bool { return len(canon(clientView(c.o, c.init))) == n })
	}
	if d := len(obsB.diffs()); d > n/10 {
		t.Errorf("%d diffs for %d tracks; coalescing should send far fewer", d, n)
	} else {
		t.Logf("%d tracks -> %d diffs", n, d)
	}
}

func TestChurnConverges(t *testing.T) {
	s := startRedis(t)
	nodes := []*testNode{newNode(t, s, "a"), newNode(t, s, "b"), newNode(t, s, "c")}
	topics := []string{"room:1", "room:2"}
	type obsInit struct {
		o    *observer
		init presence.State
	}
	var obs []obsInit
	watchers := map[string]*testNode{}
	for _, n := range nodes {
		for _, tp := range topics {
			o, st := observe(t, n, tp)
			obs = append(obs, obsInit{o, st})
			watchers[o.id] = n
		}
	}
	// model: topic -> key -> ref per (node, owner, key)
	type slot struct{ node, owner, key string }
	model := map[string]map[slot]string{}
	for _, tp := range topics {
		model[tp] = map[slot]string{}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := context.Background()
	for i := 0; i < 600; i++ {
		n := nodes[rng.IntN(len(nodes))]
		tp := topics[rng.IntN(len(topics))]
		sl := slot{n.id, fmt.Sprint("owner", rng.IntN(6)), fmt.Sprint("user", rng.IntN(4))}
		_, tracked := model[tp][sl]
		switch op := rng.IntN(4); {
		case !tracked:
			r, err := n.tr.Track(ctx, tp, sl.owner, sl.key, meta(fmt.Sprintf(`{"i":%d}`, i)))
			if err != nil {
				t.Fatal(err)
			}
			model[tp][sl] = r
		case op == 0:
			r, err := n.tr.Update(ctx, tp, sl.owner, sl.key, meta(fmt.Sprintf(`{"i":%d}`, i)))
			if err != nil {
				t.Fatal(err)
			}
			model[tp][sl] = r
		case op == 1:
			if err := n.tr.UntrackAll(ctx, tp, sl.owner); err != nil {
				t.Fatal(err)
			}
			for k := range model[tp] {
				if k.node == n.id && k.owner == sl.owner {
					delete(model[tp], k)
				}
			}
		default:
			if err := n.tr.Untrack(ctx, tp, sl.owner, sl.key); err != nil {
				t.Fatal(err)
			}
			delete(model[tp], sl)
		}
		if rng.IntN(50) == 0 {
			time.Sleep(testCoalesce) // let some windows close mid-churn
		}
	}
	want := map[string]map[string][]string{}
	for _, tp := range topics {
		w := map[string][]string{}
		for sl, r := range model[tp] {
			w[sl.key] = append(w[sl.key], r)
		}
		for k := range w {
			sort.Strings(w[k])
		}
		want[tp] = w
	}
	for _, n := range nodes {
		for _, tp := range topics {
			eventually(t, 5*time.Second, fmt.Sprintf("List on %s %s to match the model", n.id, tp), func() bool {
				return reflect.DeepEqual(listCanon(t, n, tp), want[tp])
			})
		}
	}
	for _, oi := range obs {
		var tp string
		oi.o.mu.Lock()
		if len(oi.o.msgs) > 0 {
			tp = oi.o.msgs[0].Topic
		}
		oi.o.mu.Unlock()
		if tp == "" {
			continue
		}
		var got map[string][]string
		eventually(t, 5*time.Second, "client view of "+oi.o.id+" to match the model", func() bool {
			got = canon(clientView(oi.o, oi.init))
			return reflect.DeepEqual(got, want[tp])
		})
	}
}

// A gap in a peer's clock makes the node re-read the topic and send a
// presence_state to its local subscribers only.
func TestGapTriggersLocalState(t *testing.T) {
	s := startRedis(t)
	var mu sync.Mutex
	var states []*pubsub.Message
	a := newNode(t, s, "a", func(o *Options) {
		o.LocalDispatch = func(m *pubsub.Message) {
			mu.Lock()
			states = append(states, m)
			mu.Unlock()
		}
	})
	b := newNode(t, s, "b")
	rA := track(t, a, "room:1", "a1", "alice", `{}`) // a now watches room:1
	eventually(t, 2*time.Second, "a to watch room:1", func() bool {
		a.tr.watcher.mu.Lock()
		defer a.tr.watcher.mu.Unlock()
		return a.tr.watcher.topics["room:1"] != nil
	})
	fake := func(clock int) {
		p := fmt.Sprintf(`{"joins":{},"leaves":{},"src":"ghost#1","clock":%d}`, clock)
		if err := b.ps.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "presence_diff", Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	fake(1)
	fake(2)
	fake(4) // 3 was lost
	eventually(t, 2*time.Second, "a presence_state after the gap", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) == 1
	})
	mu.Lock()
	m := states[0]
	mu.Unlock()
	if m.Topic != "room:1" || m.Event != "presence_state" {
		t.Fatalf("dispatched %s %s", m.Topic, m.Event)
	}
	var st presence.State
	if err := json.Unmarshal(m.Payload, &st); err != nil {
		t.Fatal(err)
	}
	if got := canon(toJS(st)); !reflect.DeepEqual(got, map[string][]string{"alice": {rA}}) {
		t.Errorf("state = %v", got)
	}
	first := time.Now()
	if n := a.tr.Repairs(); n != 1 {
		t.Errorf("Repairs() = %d after one repair, want 1", n)
	}

	// Two more gaps at once: the topic was just repaired, so they are
	// repaired together, once, a repairInterval after the first.
	fake(6)
	fake(8)
	eventually(t, repairInterval+2*time.Second, "a presence_state after the later gaps", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) == 2
	})
	if d := time.Since(first); d < repairInterval*9/10 {
		t.Errorf("second repair %v after the first, want at least %v", d, repairInterval)
	}
	fake(9) // in sequence: no repair
	track(t, a, "room:1", "a2", "carol", `{}`)
	mu.Lock()
	n := len(states)
	mu.Unlock()
	if n != 2 || a.tr.Repairs() != 2 {
		t.Errorf("%d states and Repairs() = %d after the paced repair, want 2 and 2", n, a.tr.Repairs())
	}
}

// A peer that lost its pub/sub connection asks every node, on the control
// topic, to refresh its clients: its diffs sent meanwhile reached nobody.
func TestPeerRefreshRequestSendsLocalState(t *testing.T) {
	s := startRedis(t)
	var mu sync.Mutex
	var states []*pubsub.Message
	a := newNode(t, s, "a", func(o *Options) {
		o.LocalDispatch = func(m *pubsub.Message) {
			mu.Lock()
			states = append(states, m)
			mu.Unlock()
		}
	})
	b := newNode(t, s, "b")
	track(t, a, "room:1", "a1", "alice", `{}`)
	track(t, b, "room:1", "b1", "bob", `{}`)
	eventually(t, 2*time.Second, "a to watch room:1", func() bool {
		a.tr.watcher.mu.Lock()
		defer a.tr.watcher.mu.Unlock()
		return a.tr.watcher.topics["room:1"] != nil
	})
	if err := b.ps.Publish(context.Background(), &pubsub.Message{Topic: ControlTopic, Event: "refresh", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a presence_state after the peer's request", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) > 0
	})
	mu.Lock()
	m := states[0]
	mu.Unlock()
	var st presence.State
	if err := json.Unmarshal(m.Payload, &st); err != nil {
		t.Fatal(err)
	}
	if m.Topic != "room:1" || m.Event != "presence_state" || len(st["alice"].Metas) != 1 || len(st["bob"].Metas) != 1 {
		t.Fatalf("dispatched %s %s %s, want room:1's presence_state with alice and bob", m.Topic, m.Event, m.Payload)
	}
}

func TestEntriesCountsThisNodesEntriesOnly(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	ctx := context.Background()
	counts := func() (int, int) { return a.tr.Entries(), b.tr.Entries() }
	track(t, a, "room:1", "x", "1", `{}`)
	track(t, a, "room:1", "y", "1", `{}`)
	track(t, a, "room:2", "x", "2", `{}`)
	track(t, b, "room:1", "z", "3", `{}`)
	eventually(t, 2*time.Second, "a to see b's entry", func() bool { return len(listCanon(t, a, "room:1")) == 2 })
	if na, nb := counts(); na != 3 || nb != 1 {
		t.Fatalf("Entries = %d, %d; want 3 on a (its own only), 1 on b", na, nb)
	}
	if _, err := a.tr.Update(ctx, "room:1", "x", "1", meta(`{"s":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.tr.Track(ctx, "room:1", "x", "1", meta(`{}`)); err != presence.ErrAlreadyTracked {
		t.Fatalf("second Track: %v", err)
	}
	if na, _ := counts(); na != 3 {
		t.Fatalf("after Update and a refused Track: Entries = %d, want 3", na)
	}
	if err := a.tr.Untrack(ctx, "room:1", "y", "1"); err != nil {
		t.Fatal(err)
	}
	if err := a.tr.Untrack(ctx, "room:1", "y", "1"); err != nil { // not tracked any more
		t.Fatal(err)
	}
	if na, _ := counts(); na != 2 {
		t.Fatalf("after Untrack: Entries = %d, want 2", na)
	}
	track(t, a, "room:2", "x", "4", `{}`)
	if err := a.tr.UntrackAll(ctx, "room:2", "x"); err != nil {
		t.Fatal(err)
	}
	if na, _ := counts(); na != 1 {
		t.Fatalf("after UntrackAll: Entries = %d, want 1", na)
	}
	if err := a.tr.Close(); err != nil {
		t.Fatal(err)
	}
	if na, nb := counts(); na != 0 || nb != 1 {
		t.Fatalf("after a's Close: Entries = %d, %d; want 0, 1", na, nb)
	}
}

// barrierPubSub holds each presence_diff publish until another one is in
// flight at the same time (or a few seconds passed), and records the
// most it saw in flight at once.
type barrierPubSub struct {
	pubsub.PubSub
	mu       sync.Mutex
	inflight int
	max      int
	release  chan struct{}
}

func (b *barrierPubSub) Publish(ctx context.Context, m *pubsub.Message) error {
	if m.Event != "presence_diff" {
		return b.PubSub.Publish(ctx, m)
	}
	b.mu.Lock()
	b.inflight++
	first := b.inflight == 2 && b.max < 2
	b.max = max(b.max, b.inflight)
	if first {
		close(b.release)
	}
	b.mu.Unlock()
	select {
	case <-b.release:
	case <-time.After(3 * time.Second):
	}
	b.mu.Lock()
	b.inflight--
	b.mu.Unlock()
	return b.PubSub.Publish(ctx, m)
}

// The diffs of one flush are published together, not one round trip after
// another: one at a time, a flush of many topics ran past its deadline on a
// busy Redis, losing the later diffs.
func TestFlushPublishesTopicsTogether(t *testing.T) {
	s := startRedis(t)
	var bp *barrierPubSub
	a := newNode(t, s, "a", func(o *Options) {
		bp = &barrierPubSub{PubSub: o.PubSub, release: make(chan struct{})}
		o.PubSub = bp
		o.Coalesce = 200 * time.Millisecond // every track below lands in one window
	})
	obs, _ := observe(t, a, "room:9")
	for i := range 10 {
		track(t, a, fmt.Sprint("room:", i), fmt.Sprint("o", i), "alice", `{}`)
	}
	eventually(t, 10*time.Second, "a presence_diff for room:9", func() bool {
		return len(obs.diffs()) > 0
	})
	bp.mu.Lock()
	defer bp.mu.Unlock()
	if bp.max < 2 {
		t.Errorf("at most %d diff published at once, want the flush's diffs together", bp.max)
	}
}

// countHook counts the commands and pipelines a client sends (or tries
// to: against a dead Redis each fails at the dial).
type countHook struct{ n atomic.Int64 }

func (h *countHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *countHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// failResync stops Redis and makes a change whose write fails, which asks
// for a resync that fails too, and waits for that failure.
func failResync(t *testing.T, s *server, n *testNode) {
	t.Helper()
	s.Stop()
	if _, err := n.tr.Track(context.Background(), "room:1", "y", "2", meta(`{}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a failed resync", func() bool {
		n.tr.mu.Lock()
		defer n.tr.mu.Unlock()
		return n.tr.needResync && !n.tr.resyncAt.IsZero()
	})
}

// A Redis that is gone refuses connections at once. The tracker must then
// retry its re-assertion once a heartbeat, not in a loop: it once spun,
// logging a warning per attempt (gigabytes a minute), and Close, which
// waits for that loop, never returned, so the node never exited. Once
// Redis is back the entries are re-asserted, and Close returns.
func TestDeadRedisIsRetriedPerHeartbeat(t *testing.T) {
	s := startRedis(t)
	hook := &countHook{}
	c := client(t, s)
	c.AddHook(hook)
	n := newNode(t, s, "a", func(o *Options) { o.Client, o.Address = c, "" })
	track(t, n, "room:1", "x", "1", `{}`)
	failResync(t, s, n)
	// The rate of attempts needs a window of time to be seen in: ten
	// heartbeats, each worth a heartbeat pipeline and a resync of a few
	// commands. The loop it replaces made thousands.
	before := hook.n.Load()
	time.Sleep(10 * testHeartbeat)
	if tried := hook.n.Load() - before; tried > 60 {
		t.Fatalf("%d commands tried against a dead Redis in 10 heartbeats: the tracker spins", tried)
	}

	s.Start()
	key := "test:p:room:1"
	eventually(t, 5*time.Second, "both entries re-asserted after Redis came back", func() bool {
		return redistest.Ping(s.Addr()) && c.HLen(context.Background(), key).Val() == 2
	})
	closed := make(chan error, 1)
	go func() { closed <- n.tr.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}

// A key's metas come in track order on every node, whichever node each
// was tracked on: List merges this node's own entries into the other
// nodes' (read once and shared), so the order must survive the merge.
func TestListKeepsTrackOrderAcrossNodes(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	var want []string
	for i, n := range []*testNode{a, b, b, a, b, a, a, b} {
		want = append(want, track(t, n, "room:1", fmt.Sprintf("sock%d", i), "42", `{}`))
		other := map[*testNode]*testNode{a: b, b: a}[n]
		eventually(t, 2*time.Second, "the track seen on the other node", func() bool {
			return len(listCanon(t, other, "room:1")["42"]) == len(want)
		})
	}
	for _, n := range []*testNode{a, b} {
		st, err := n.tr.List(context.Background(), "room:1")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range toJS(st)["42"] {
			got = append(got, ref(m))
		}
		if !slices.Equal(got, want) {
			t.Fatalf("List on %s: refs %v, want track order %v", n.id, got, want)
		}
	}
}

// A join still waiting in its coalescing window is already in this node's
// List. If a socket listed the topic then, the join's leave must reach it:
// cancelling the pair (which saves a diff when nobody saw the join) left
// that socket showing a user who had gone, until its next presence_state.
func TestLeaveOfAListedPendingJoinIsSent(t *testing.T) {
	s := startRedis(t)
	a := newNode(t, s, "a", func(o *Options) { o.Coalesce, o.MaxCoalesce = time.Second, time.Second })
	ref := track(t, a, "room:1", "x", "1", `{}`)
	// A socket joins while that track waits for its window: subscribe,
	// then list, as a channel does.
	o, st := observe(t, a, "room:1")
	if got := canon(toJS(st)); len(got["1"]) != 1 || got["1"][0] != ref {
		t.Fatalf("the List during the window = %v, want the pending track %s", got, ref)
	}
	if err := a.tr.Untrack(context.Background(), "room:1", "x", "1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a diff carrying the leave", func() bool {
		for _, d := range o.diffs() {
			if len(d.Leaves["1"].Metas) > 0 {
				return true
			}
		}
		return false
	})
	if view := canon(clientView(o, st)); len(view) != 0 {
		t.Fatalf("the listing socket's view after the leave: %v, want empty", view)
	}
	if n := client(t, s).HLen(context.Background(), "test:p:room:1").Val(); n != 0 {
		t.Fatalf("Redis holds %d entries of the room after the track and untrack", n)
	}
}

// A resync that failed is tried again soon, then less and less often, up
// to once a heartbeat: a Redis Cluster's failover refuses writes for a
// second or two, and joins made meanwhile wait for the next resync, which
// must not come a whole heartbeat later.
func TestFailedResyncRetriedSoonThenPerHeartbeat(t *testing.T) {
	var waits []time.Duration
	w := time.Duration(0)
	for range 7 {
		w = resyncBackoff(w, 5*time.Second)
		waits = append(waits, w)
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	if !slices.Equal(waits, want) {
		t.Fatalf("waits after successive failures %v, want %v", waits, want)
	}
	if got := resyncBackoff(0, 100*time.Millisecond); got != 100*time.Millisecond {
		t.Errorf("first wait with a 100 ms heartbeat: %v, want the heartbeat", got)
	}

	s := startRedis(t)
	c := client(t, s)
	const heartbeat = 20 * time.Second
	n := newNode(t, s, "a", func(o *Options) {
		o.Client, o.Address = c, ""
		o.Heartbeat, o.DeadAfter = heartbeat, 3*heartbeat
	})
	track(t, n, "room:1", "x", "1", `{}`)
	failResync(t, s, n)
	s.Start()
	began := time.Now()
	eventually(t, 5*time.Second, "both entries re-asserted within seconds of Redis's return, not a heartbeat", func() bool {
		return redistest.Ping(s.Addr()) && c.HLen(context.Background(), "test:p:room:1").Val() == 2
	})
	t.Logf("re-asserted %v after Redis came back (heartbeat %v)", time.Since(began).Round(time.Millisecond), heartbeat)
}
