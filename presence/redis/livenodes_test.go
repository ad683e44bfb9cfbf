package redis

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

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

// A burst of Lists reads the nodes hash once, not once each (on a Redis
// Cluster that key's shard would take every List of every topic), and
// still sees the other node's entries.
func TestListsShareTheLiveNodes(t *testing.T) {
	s := startRedis(t)
	slow := func(o *Options) { o.Heartbeat, o.DeadAfter = 5*time.Second, 10*time.Second } // liveFor: 250 ms; no heartbeat's EVAL among those counted
	a, b := newNode(t, s, "a", slow), newNode(t, s, "b", slow)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := b.tr.Track(ctx, "room:1", "o1", "bob", meta(`{}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "bob listed on a", func() bool {
		st, err := a.tr.List(ctx, "room:1")
		return err == nil && len(st["bob"].Metas) == 1
	})
	rc := client(t, s)
	evals := func() int64 { return commandCalls(t, rc, "eval") }
	before, began := evals(), time.Now()
	const lists = 20
	for range lists {
		st, err := a.tr.List(ctx, "room:1")
		if err != nil || len(st["bob"].Metas) != 1 {
			t.Fatalf("List = %v, %v; want bob", st, err)
		}
	}
	// The clock script runs with each reading of the nodes hash: once per
	// 250 ms at most.
	if n, most := evals()-before, int64(time.Since(began)/(250*time.Millisecond))+1; n > most {
		t.Fatalf("%d Lists in %v read the live nodes %d times, want at most %d", lists, time.Since(began).Round(time.Millisecond), n, most)
	}
}

// commandCalls reads how many times Redis ran cmd (INFO commandstats).
func commandCalls(t *testing.T, rc *goredis.Client, cmd string) int64 {
	t.Helper()
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			return n
		}
	}
	return 0
}

// A node that, as it last read, is the only one alive lists its own table
// without reading the topic's hash, whose other rows it would hide: a
// single node with Redis costs no round trip per join. Fields of a node
// that is not live stay hidden, and a node that comes up is listed once
// the reading of the live nodes is renewed.
func TestALoneNodeListsWithoutReadingTheTopic(t *testing.T) {
	s := startRedis(t)
	slow := func(o *Options) { o.Heartbeat, o.DeadAfter = 5*time.Second, 10*time.Second } // liveFor: 250 ms; no heartbeat's HGETALL among those counted
	a := newNode(t, s, "a", slow)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.tr.Track(ctx, "room:1", "o1", "ann", meta(`{}`)); err != nil {
		t.Fatal(err)
	}
	rc := client(t, s)
	if err := rc.HSet(ctx, "test:p:room:1", "ghost/REF", `{"key":"ghost","meta":{},"t":1}`).Err(); err != nil {
		t.Fatal(err)
	}
	before, began := commandCalls(t, rc, "hgetall"), time.Now()
	const lists = 20
	for range lists {
		st, err := a.tr.List(ctx, "room:1")
		if err != nil || len(st) != 1 || len(st["ann"].Metas) != 1 {
			t.Fatalf("List = %v, %v; want ann alone", st, err)
		}
		if b, err := a.tr.AppendState(ctx, nil, "room:1"); err != nil || strings.Contains(string(b), "ghost") {
			t.Fatalf("AppendState = %s, %v", b, err)
		}
	}
	// Each reading of the live nodes reads the topic too (and the nodes
	// hash): once per 250 ms at most.
	if n, most := commandCalls(t, rc, "hgetall")-before, 2*(int64(time.Since(began)/(250*time.Millisecond))+1); n > most {
		t.Fatalf("%d Lists of a lone node in %v made %d HGETALLs, want at most %d", 2*lists, time.Since(began).Round(time.Millisecond), n, most)
	}
	b := newNode(t, s, "b", slow)
	if _, err := b.tr.Track(ctx, "room:1", "o2", "bob", meta(`{}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "bob listed on a", func() bool {
		st, err := a.tr.List(ctx, "room:1")
		return err == nil && len(st["bob"].Metas) == 1 && len(st["ghost"].Metas) == 0
	})
}
