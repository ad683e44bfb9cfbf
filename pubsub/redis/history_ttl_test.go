package redis

import (
	"context"
	"testing"
	"time"
)

// TestHistoryTTLNeverShort: after every broadcast both keys of a history
// expire together, TTL after it (pubsub.HistoryOptions.TTL: how long a
// history lives after its topic's last broadcast), whatever the keys'
// expiries were: run down, one key's shorter than the other's, or the
// stream alone gone (evicted) while the meta lives on. The expiries are
// moved by hand to stand for the time that passes between broadcasts. A
// script that skipped setting them while enough time was left would be
// held to the same (BENCHMARKS.md, "history per delivery").
func TestHistoryTTLNeverShort(t *testing.T) {
	const ttl = time.Minute
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, ttl, true)
	rc := inspector(t, srv)
	ctx := context.Background()
	stream, meta := "test:h:{room:1}:s", "test:h:{room:1}:m"
	// broadcast publishes one broadcast and checks both keys' expiry
	// (PEXPIRETIME, Unix milliseconds): one time for both, TTL after the
	// broadcast.
	broadcast := func(what string, offset uint64) {
		t.Helper()
		before := time.Now().UnixMilli()
		if pos := publishAt(t, a, "room:1", what); pos.Offset != offset {
			t.Fatalf("%s: position %v, want offset %d", what, pos, offset)
		}
		after := time.Now().UnixMilli()
		var at [2]int64
		for i, k := range []string{stream, meta} {
			v, err := rc.Do(ctx, "PEXPIRETIME", k).Int64()
			if err != nil {
				t.Fatal(err)
			}
			at[i] = v
		}
		if at[0] != at[1] {
			t.Fatalf("%s: the stream expires at %d, the meta at %d; want one time for both", what, at[0], at[1])
		}
		if lo, hi := before+ttl.Milliseconds(), after+ttl.Milliseconds(); at[0] < lo || at[0] > hi {
			t.Fatalf("%s: the keys expire at %d, want TTL (%v) after the broadcast, within [%d, %d]", what, at[0], ttl, lo, hi)
		}
	}
	pexpire := func(key string, d time.Duration) {
		t.Helper()
		if err := rc.PExpire(ctx, key, d).Err(); err != nil {
			t.Fatal(err)
		}
	}

	broadcast("first", 1)
	broadcast("second", 2)
	// Time has passed: little left on both.
	pexpire(stream, ttl/8)
	pexpire(meta, ttl/8)
	broadcast("third", 3)
	// The stream with less left than the meta.
	pexpire(stream, ttl/2)
	broadcast("fourth", 4)
	// The meta with less left than the stream.
	pexpire(meta, ttl/2)
	broadcast("fifth", 5)
	// The stream alone evicted: the broadcast's XADD makes a new one,
	// which expires with the meta, and the history goes on in its epoch.
	if err := rc.Del(ctx, stream).Err(); err != nil {
		t.Fatal(err)
	}
	broadcast("sixth", 6)
}
