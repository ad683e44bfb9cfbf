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
