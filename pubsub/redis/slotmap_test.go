package redis

import (
	"context"
	"testing"
)

// TestSlotMapReload: reload reads the slot map again at once, so that
// after a slot moved the map names its new master though no command was
// answered MOVED. go-redis offers no call for that alone; this holds its
// ForEachMaster to reading the map before it visits the masters.
func TestSlotMapReload(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", openGate("a"))
	ctx := context.Background()
	key := a.shardChannel("lobby")
	slot := keySlot(key)
	from := c.owner(t, slot)
	to := (from + 1) % 3
	if got := a.slots.master(ctx, key); got != c.servers[from].Addr() {
		t.Fatalf("the map names %s, want master %d (%s)", got, from, c.servers[from].Addr())
	}
	migrateSlot(t, c, slot, from, to, nil)
	if got := a.slots.master(ctx, key); got != c.servers[from].Addr() {
		t.Fatalf("the map followed the move by itself (%s): nothing to reload", got)
	}
	if err := a.slots.reload(ctx); err != nil {
		t.Fatal(err)
	}
	if got := a.slots.master(ctx, key); got != c.servers[to].Addr() {
		t.Fatalf("after reload the map names %s, want master %d (%s)", got, to, c.servers[to].Addr())
	}
}
