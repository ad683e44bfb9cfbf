package cluster

// What the presence scenarios (presence_test.go) observe and compare: the
// payloads merged as the JavaScript client does, observers on the nodes,
// a model of who should be listed, and waits until the cluster matches it.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

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
