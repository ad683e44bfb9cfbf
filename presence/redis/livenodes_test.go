package redis

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/redistest"
)

// LiveNodes lists the nodes whose heartbeat is fresh by Redis's clock, as
// List and the reaper judge them: not a stale or malformed entry, not a
// node that closed.
func TestLiveNodesAreTheFreshHeartbeats(t *testing.T) {
	s := startRedis(t)
	a, b := newNode(t, s, "a"), newNode(t, s, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rc := client(t, s)
	now, err := rc.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	stale := now.Add(-2 * testDeadAfter).UnixMilli()
	if err := rc.HSet(ctx, "test:nodes", "stale", strconv.FormatInt(stale, 10), "garbage", "x").Err(); err != nil {
		t.Fatal(err)
	}
	got, err := a.tr.LiveNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("LiveNodes = %v, want %v", got, want)
	}
	// A node that closed removed its heartbeat: gone at once.
	if err := b.tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := a.tr.LiveNodes(ctx); err != nil || !slices.Equal(got, []string{"a"}) {
		t.Fatalf("LiveNodes after b closed = %v, %v; want [a]", got, err)
	}
	// A node whose last heartbeat is older than DeadAfter is not live,
	// reaped or not.
	if err := rc.HSet(ctx, "test:nodes", "fresh", strconv.FormatInt(now.UnixMilli(), 10)).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := a.tr.LiveNodes(ctx); err != nil || !slices.Contains(got, "fresh") {
		t.Fatalf("LiveNodes = %v, %v; want a fresh heartbeat listed", got, err)
	}
	eventually(t, 5*time.Second, "the silent node to leave the live nodes", func() bool {
		got, err := a.tr.LiveNodes(ctx)
		return err == nil && !slices.Contains(got, "fresh")
	})
}

// Redis unreachable: an error, not an empty list (an empty roster would
// open a Gate at once).
func TestLiveNodesFailsWithoutRedis(t *testing.T) {
	s := startRedis(t)
	a := newNode(t, s, "a")
	s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if got, err := a.tr.LiveNodes(ctx); err == nil {
		t.Fatalf("LiveNodes with Redis down = %v, want an error", got)
	}
	s.Start() // for the tracker's Close
	eventually(t, 5*time.Second, "Redis back", func() bool { return redistest.Ping(s.Addr()) })
}
