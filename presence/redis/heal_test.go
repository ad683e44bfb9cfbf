package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
)

// fullView is a client's view of a topic as the JavaScript Presence class
// keeps it: the initial state, then every presence_state (a repair
// replaces the view) and presence_diff in the order they arrived.
func fullView(o *observer, initial presence.State) jsState {
	st := jsState{}
	syncState(st, toJS(initial))
	o.mu.Lock()
	msgs := append([]*pubsub.Message(nil), o.msgs...)
	o.mu.Unlock()
	for _, m := range msgs {
		switch m.Event {
		case "presence_state":
			var s presence.State
			if err := json.Unmarshal(m.Payload, &s); err != nil {
				panic(err)
			}
			syncState(st, toJS(s))
		case "presence_diff":
			var d presence.Diff
			if err := json.Unmarshal(m.Payload, &d); err != nil {
				panic(err)
			}
			syncDiff(st, toJS(d.Joins), toJS(d.Leaves))
		}
	}
	return st
}

// dispatchLocally sends a node's repairs (presence_state) to its own
// subscribers, as package node wires it.
func dispatchLocally(o *Options) {
	o.LocalDispatch = o.PubSub.(interface{ DispatchLocal(*pubsub.Message) }).DispatchLocal
}

// A live node taken for dead (a pause longer than DeadAfter, a CPU-starved
// pod) is reaped by a peer and re-asserts its entries at its next
// heartbeat. The reaper's leaves and the re-assertion's joins come from two
// nodes, in no set order: here the reaper's leaves are held in its
// coalescing window until after the joins, as a busy topic's wide window
// does. Every client, on either node, must end with the live entries, not
// with the leave applied last.
func TestFalselyReapedNodeHeals(t *testing.T) {
	s := startRedis(t)
	a := newNode(t, s, "a", dispatchLocally)
	slow := func(o *Options) { o.Coalesce, o.MaxCoalesce = 4*testHeartbeat, 4*testHeartbeat }
	b := newNode(t, s, "b", dispatchLocally, slow)
	const n = 21 // a's 20 entries and b's one: a node repairs the topics where it has entries
	for i := 0; i < n-1; i++ {
		track(t, a, "room:1", fmt.Sprint("o", i), fmt.Sprint("u", i), `{}`)
	}
	track(t, b, "room:1", "b1", "bob", `{}`)
	eventually(t, 5*time.Second, "b to list all", func() bool { return len(listCanon(t, b, "room:1")) == n })
	obsA, initA := observe(t, a, "room:1")
	obsB, initB := observe(t, b, "room:1")

	b.tr.reap(context.Background(), "a")

	leftOnB := func() bool {
		for _, d := range obsB.diffs() {
			if len(d.Leaves) > 0 {
				return true
			}
		}
		return false
	}
	eventually(t, 5*time.Second, "the reaper's leaves to go out", leftOnB)
	eventually(t, 5*time.Second, "a to re-assert its entries", func() bool { return len(listCanon(t, b, "room:1")) == n })
	for name, c := range map[string]struct {
		o    *observer
		init presence.State
	}{"a": {obsA, initA}, "b": {obsB, initB}} {
		eventually(t, 5*time.Second, "the client on "+name+" to show every live entry", func() bool {
			return len(canon(fullView(c.o, c.init))) == n
		})
	}
}

// A node that was reaped comes back while a peer's reading of the live
// nodes, taken without it, is still cached; its re-assertion's joins come
// with a gap in its clock (a diff it published while cut off was lost), so
// the peer repairs the topic at once. That repair is a presence_state that
// replaces its clients' views: read with the cached live nodes, it would
// drop the returning node's entries the joins had just shown, and nothing
// would bring them back. A diff from a node the cache holds for dead makes
// the cache stale.
func TestRepairAfterReturnSeesTheReturningNode(t *testing.T) {
	s := startRedis(t)
	long := func(o *Options) { o.DeadAfter = 10 * time.Second } // liveFor: 250 ms
	a := newNode(t, s, "a", dispatchLocally, long)
	// b heartbeats once a minute: its return is the resync this test asks for.
	quiet := func(o *Options) { o.Heartbeat, o.DeadAfter = time.Minute, 3*time.Minute }
	b := newNode(t, s, "b", quiet)
	track(t, a, "room:1", "a1", "ann", `{}`)
	eventually(t, 5*time.Second, "a to watch room:1", func() bool {
		a.tr.watcher.mu.Lock()
		defer a.tr.watcher.mu.Unlock()
		return a.tr.watcher.topics["room:1"] != nil
	})
	track(t, b, "room:1", "b1", "bob", `{}`)
	eventually(t, 5*time.Second, "a to list both", func() bool { return len(listCanon(t, a, "room:1")) == 2 })
	obs, init := observe(t, a, "room:1")

	a.tr.reap(context.Background(), "b")
	eventually(t, 5*time.Second, "the client on a to see bob leave", func() bool {
		return len(canon(fullView(obs, init))) == 1
	})
	if got := listCanon(t, a, "room:1"); len(got) != 1 {
		t.Fatalf("a lists %v after the reap, want ann only", got)
	}
	a.tr.cacheLive(map[string]bool{"a": true}) // as a List just read them

	b.tr.mu.Lock()
	b.tr.clocks["room:1"]++ // a diff lost while b was cut off
	b.tr.mu.Unlock()
	b.tr.requestResync()
	eventually(t, 5*time.Second, "a to repair the topic after b's gap", func() bool { return a.tr.Repairs() == 1 })
	if got := canon(fullView(obs, init)); len(got) != 2 {
		t.Errorf("the client on a shows %v after the repair, want ann and bob", got)
	}
}
