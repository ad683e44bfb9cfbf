package redis

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/test/redistest"
)

// A master dies and another takes its slot (as its replica would): the
// node's cluster client, which neither retries nor follows redirects,
// must read the slot map again after the failed commands and reach the
// new owner within moments, not after go-redis's minute between reloads.
func TestClusterClientFollowsAMasterThatDied(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	uc, err := Options{URL: c.url()}.NewClient("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = uc.Close() })
	const key = "{room:dies}:k"
	slot := keySlot(key)
	if err := uc.Set(ctx, key, "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	victim := c.owner(t, slot)
	heir := (victim + 1) % len(c.masters)
	c.servers[victim].Stop()
	// The survivors forget the dead master, which frees its slots, and
	// the heir takes the key's slot; the others need not be covered.
	for i, m := range c.masters {
		if i == victim {
			continue
		}
		for _, args := range [][]any{
			{"config", "set", "cluster-require-full-coverage", "no"},
			{"cluster", "forget", c.ids[victim]},
		} {
			if err := m.Do(ctx, args...).Err(); err != nil {
				t.Fatalf("%v on master %d: %v", args, i, err)
			}
		}
	}
	if err := c.masters[heir].ClusterAddSlots(ctx, slot).Err(); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	var last error
	eventually(t, 5*time.Second, "a write of the dead master's slot to reach its heir", func() bool {
		last = uc.Set(ctx, key, "after", 0).Err()
		return last == nil
	})
	t.Logf("writes reached the heir %v after it took the slot (last error before: %v)", time.Since(began).Round(time.Millisecond), last)
	if got := c.masters[heir].Get(ctx, key).Val(); got != "after" {
		t.Errorf("the heir holds %q, want the write that followed the failover", got)
	}
}

// Only failures without an answer from Redis call for a new slot map: an
// error reply is Redis answering (a MOVED reloads it by itself).
func TestUnanswered(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{goredis.Nil, false},
		{goredis.ErrClosed, false},
		{context.Canceled, false},
		{dial, true},
		{io.EOF, true},
		{context.DeadlineExceeded, true},
	} {
		if got := unanswered(c.err); got != c.want {
			t.Errorf("unanswered(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	// A real error reply.
	rc := goredis.NewClient(&goredis.Options{Addr: redistest.Start(t).Addr()})
	defer rc.Close()
	err := rc.Do(context.Background(), "no-such-command").Err()
	if err == nil || unanswered(err) {
		t.Errorf("unanswered(%v) = true, want false for Redis's error reply", err)
	}
}
