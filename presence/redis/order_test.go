package redis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestOrderFollowsTable: whatever the tracks, updates and untracks, each
// topic's order holds exactly its table's entries, sorted as List needs
// them (the order is kept, not sorted at each List).
func TestOrderFollowsTable(t *testing.T) {
	s := startRedis(t)
	n := newNode(t, s, "a")
	tr := n.tr
	ctx := context.Background()
	check := func(step string) {
		t.Helper()
		tr.mu.Lock()
		defer tr.mu.Unlock()
		for _, topic := range []string{"room:1", "room:2"} {
			var want []*entry
			for _, e := range tr.table[topic] {
				want = append(want, e)
			}
			slices.SortFunc(want, compareEntries)
			if got := tr.order[topic]; !slices.Equal(got, want) {
				t.Fatalf("%s: %s's order holds %d entries, its table %d, or out of order", step, topic, len(got), len(want))
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	type tracked struct{ topic, owner, key string }
	var live []tracked
	for i := range 400 {
		switch op := rng.IntN(10); {
		case op < 5 || len(live) == 0:
			// Few keys, so that keys carry several metas.
			e := tracked{fmt.Sprintf("room:%d", 1+rng.IntN(2)), fmt.Sprintf("sock%d", i), fmt.Sprintf("k%d", rng.IntN(8))}
			if _, err := tr.Track(ctx, e.topic, e.owner, e.key, meta(`{}`)); err != nil {
				t.Fatal(err)
			}
			live = append(live, e)
		case op < 7:
			e := live[rng.IntN(len(live))]
			if _, err := tr.Update(ctx, e.topic, e.owner, e.key, meta(`{"u":1}`)); err != nil {
				t.Fatal(err)
			}
		case op < 9:
			j := rng.IntN(len(live))
			if err := tr.Untrack(ctx, live[j].topic, live[j].owner, live[j].key); err != nil {
				t.Fatal(err)
			}
			live = slices.Delete(live, j, j+1)
		default:
			j := rng.IntN(len(live))
			if err := tr.UntrackAll(ctx, live[j].topic, live[j].owner); err != nil {
				t.Fatal(err)
			}
			live = slices.Delete(live, j, j+1)
		}
		check(fmt.Sprintf("step %d", i))
	}
	for _, e := range live {
		if err := tr.UntrackAll(ctx, e.topic, e.owner); err != nil {
			t.Fatal(err)
		}
	}
	check("all gone")
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.order) != 0 {
		t.Fatalf("%d topics left in the order", len(tr.order))
	}
}
