package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	pubsubredis "github.com/channelsd/channelsd/pubsub/redis"
)

// The clustered tracker keeps the presence.Tracker limits: keys, metas
// and entries per topic over them are refused, nothing reaches Redis or
// a diff, and each refusal is counted. Unbounded, 2.9 MiB of long user
// names became 300 MiB in Redis.
func TestTrackerRefusesEntriesOutsideTheLimits(t *testing.T) {
	s := startRedis(t)
	a := newNode(t, s, "a", func(o *Options) { o.Limits.MaxPerTopic = 2 })
	ctx := context.Background()
	long := strings.Repeat("k", presence.DefaultMaxKeyLength+1)
	if _, err := a.tr.Track(ctx, "room:1", "o1", long, meta(`{}`)); !errors.Is(err, presence.ErrKeyTooLong) {
		t.Fatalf("Track of a %d-byte key = %v, want ErrKeyTooLong", len(long), err)
	}
	big := meta(`{"a":"` + strings.Repeat("m", presence.DefaultMaxMetaSize) + `"}`)
	if _, err := a.tr.Track(ctx, "room:1", "o1", "ann", big); !errors.Is(err, presence.ErrMetaTooLarge) {
		t.Fatalf("Track of a %d-byte meta = %v, want ErrMetaTooLarge", len(big), err)
	}
	if _, err := a.tr.Track(ctx, "room:1", "o1", "ann", meta("{\"a\":\"\xff\"}")); !errors.Is(err, presence.ErrNotObject) {
		t.Fatalf("Track of a meta that is not UTF-8 = %v, want ErrNotObject", err)
	}
	track(t, a, "room:1", "o1", "ann", `{}`)
	track(t, a, "room:1", "o2", "bob", `{}`)
	if _, err := a.tr.Track(ctx, "room:1", "o3", "cat", meta(`{}`)); !errors.Is(err, presence.ErrTopicFull) {
		t.Fatalf("third Track on a topic of at most 2 = %v, want ErrTopicFull", err)
	}
	if _, err := a.tr.Update(ctx, "room:1", "o1", "ann", big); !errors.Is(err, presence.ErrMetaTooLarge) {
		t.Fatalf("Update with a large meta = %v, want ErrMetaTooLarge", err)
	}
	if _, err := a.tr.Update(ctx, "room:1", "o1", "ann", meta(`{"s":1}`)); err != nil {
		t.Fatalf("Update in a full topic: %v", err)
	}
	if got := listCanon(t, a, "room:1"); len(got) != 2 || got["ann"] == nil || got["bob"] == nil {
		t.Fatalf("List = %v, want ann and bob", got)
	}
	hits := a.tr.LimitHits()
	for limit, want := range map[string]uint64{"presence_key_length": 1, "presence_meta_size": 2, "presence_topic_entries": 1} {
		if got := hits[limit](); got != want {
			t.Errorf("%s hits = %d, want %d", limit, got, want)
		}
	}
}

// A window that gathered more than one Redis message can carry goes out
// as several diffs, each under the bound, with consecutive clocks: no
// presence change is lost and no peer sees a gap. As one diff, forty
// joins of 1 MB names made Redis close both nodes' connections.
func TestLargeBatchIsSplitIntoDiffsUnderTheMessageSize(t *testing.T) {
	s := startRedis(t)
	small := func(o *pubsubredis.Options) { o.MaxMessageSize = pubsubredis.MinMaxMessageSize }
	// One window takes all the joins below.
	window := func(o *Options) { o.Coalesce, o.MaxCoalesce = time.Second, time.Second }
	a := newNodeWith(t, s, "a", small, window)
	b := newNodeWith(t, s, "b", small, window)
	// b has entries on the topic, so its tracker watches a's clocks.
	track(t, b, "room:1", "b0", "b-user", `{}`)
	eventually(t, 5*time.Second, "a to list b's entry", func() bool { return listCanon(t, a, "room:1")["b-user"] != nil })
	obsB, initB := observe(t, b, "room:1")

	// 60 joins with metas near the limit: about 130 KB in one window.
	filler := strings.Repeat("m", presence.DefaultMaxMetaSize-40)
	const n = 60
	for i := range n {
		track(t, a, "room:1", fmt.Sprintf("o%d", i), fmt.Sprintf("user-%02d", i), `{"f":"`+filler+`"}`)
	}
	want := listCanon(t, a, "room:1")
	if len(want) != n+1 {
		t.Fatalf("a lists %d keys, want %d", len(want), n+1)
	}
	eventually(t, 5*time.Second, "b's subscriber to see every join", func() bool {
		return reflect.DeepEqual(canon(clientView(obsB, initB)), want)
	})
	budget := pubsubredis.MinMaxMessageSize - b.ps.MessageOverhead("room:1", "presence_diff")
	var clocks []uint64
	obsB.mu.Lock()
	for _, m := range obsB.msgs {
		if m.Event != "presence_diff" {
			continue
		}
		if len(m.Payload) > budget {
			t.Errorf("a diff of %d bytes, above the budget of %d", len(m.Payload), budget)
		}
		var d struct {
			Src   string `json:"src"`
			Clock uint64 `json:"clock"`
		}
		if err := json.Unmarshal(m.Payload, &d); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(d.Src, "a#") {
			clocks = append(clocks, d.Clock)
		}
	}
	obsB.mu.Unlock()
	if len(clocks) < 2 {
		t.Fatalf("a sent %d diffs, want the batch split in several", len(clocks))
	}
	for i, c := range clocks {
		if c != uint64(i+1) {
			t.Fatalf("a's clocks %v, want 1, 2, ...", clocks)
		}
	}
	if r := b.tr.Repairs(); r != 0 {
		t.Errorf("b repaired %d times: it saw a gap", r)
	}
	if st := a.ps.Stats(); st.TooLarge != 0 || st.PublishErrors != 0 {
		t.Errorf("a's PubSub refused or failed publishes: %+v", st)
	}
	if err := a.tr.Close(); err != nil {
		t.Fatal(err)
	}
	// The leaves of Close are split alike.
	eventually(t, 5*time.Second, "b's subscriber to see every leave", func() bool {
		v := canon(clientView(obsB, initB))
		return len(v) == 1 && v["b-user"] != nil
	})
}

// Entries in Redis that clients cannot be sent (a meta that is not
// UTF-8, not a JSON object, or a value that does not decode) are skipped
// by List and counted: another release or anything with access to Redis
// may have written them, and one such text frame closes every WebSocket
// subscriber it reaches.
func TestInvalidEntriesInRedisAreSkipped(t *testing.T) {
	s := startRedis(t)
	a := newNode(t, s, "a")
	rc := client(t, s)
	ctx := context.Background()
	now, err := rc.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.HSet(ctx, "test:nodes", "x", strconv.FormatInt(now.UnixMilli(), 10)).Err(); err != nil {
		t.Fatal(err)
	}
	value := func(key, m string) string {
		return `{"key":` + strconv.Quote(key) + `,"meta":` + m + `,"t":1}`
	}
	if err := rc.HSet(ctx, "test:p:room:1",
		"x/r1", value("good", `{"phx_ref":"r1"}`),
		"x/r2", value("bad-utf8", "{\"phx_ref\":\"r2\",\"n\":\"\xff\"}"),
		"x/r3", value("not-object", `"r3"`),
		"x/r4", `{"key":`,
	).Err(); err != nil {
		t.Fatal(err)
	}
	st, err := a.tr.List(ctx, "room:1")
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || len(st["good"].Metas) != 1 {
		t.Fatalf("List = %v, want only the valid entry", st)
	}
	if got := a.tr.Invalid(); got != 3 {
		t.Fatalf("Invalid = %d, want 3", got)
	}
}

// The watcher keeps a clock per source of presence_diff on the topics
// where this node has entries; whoever can publish that event on a topic
// names any src, and each one stayed in memory for as long as the node
// had entries there. It keeps at most maxSrcsPerTopic.
func TestWatcherKeepsBoundedSources(t *testing.T) {
	s := startRedis(t)
	a := newNode(t, s, "a")
	track(t, a, "room:1", "o1", "ann", `{}`)
	eventually(t, 5*time.Second, "a to watch room:1", func() bool {
		a.tr.watcher.mu.Lock()
		defer a.tr.watcher.mu.Unlock()
		return a.tr.watcher.topics["room:1"] != nil
	})
	for i := range 5 * maxSrcsPerTopic {
		payload := fmt.Sprintf(`{"joins":{},"leaves":{},"src":"fake-%d#%s","clock":1}`, i, strings.Repeat("x", 100))
		a.tr.watcher.Deliver(&pubsub.Message{Topic: "room:1", Event: "presence_diff", Payload: []byte(payload)})
	}
	a.tr.watcher.mu.Lock()
	n := len(a.tr.watcher.topics["room:1"])
	a.tr.watcher.mu.Unlock()
	if n > maxSrcsPerTopic {
		t.Fatalf("watcher keeps %d sources on room:1, want at most %d", n, maxSrcsPerTopic)
	}
}

// One owner tracks at most Limits.MaxPerOwner keys on a topic, here too.
func TestTrackerBoundsKeysPerOwner(t *testing.T) {
	s := startRedis(t)
	a := newNode(t, s, "a", func(o *Options) { o.Limits.MaxPerOwner = 2 })
	ctx := context.Background()
	track(t, a, "room:1", "o1", "k1", `{}`)
	track(t, a, "room:1", "o1", "k2", `{}`)
	if _, err := a.tr.Track(ctx, "room:1", "o1", "k3", meta(`{}`)); !errors.Is(err, presence.ErrTooManyKeys) {
		t.Fatalf("third key of one owner = %v, want ErrTooManyKeys", err)
	}
	track(t, a, "room:1", "o2", "k3", `{}`)
	if err := a.tr.Untrack(ctx, "room:1", "o1", "k1"); err != nil {
		t.Fatal(err)
	}
	track(t, a, "room:1", "o1", "k3", `{}`)
	if err := a.tr.UntrackAll(ctx, "room:1", "o1"); err != nil {
		t.Fatal(err)
	}
	track(t, a, "room:1", "o1", "k4", `{}`)
	track(t, a, "room:1", "o1", "k5", `{}`)
	if got := a.tr.LimitHits()["presence_join_entries"](); got != 1 {
		t.Errorf("join entries hits = %d, want 1", got)
	}
}

// stamp's parts: each under the budget, consecutive clocks, every change
// once, no leave before a join, the last flag on the last part only.
func TestStampSplitsUnderTheBudget(t *testing.T) {
	const budget = 4096
	tr := &Tracker{opt: Options{MaxDiffSize: budget}, src: "n#1", clocks: map[string]uint64{"room:1": 7}, table: map[string]*topicTable{}}
	tr.diffBase = emptyDiffSize(tr.src)
	var joins, leaves []*change
	for i := range 40 {
		m := meta(`{"phx_ref":"j` + strconv.Itoa(i) + `","pad":"` + strings.Repeat("<", i*10) + `"}`)
		joins = append(joins, &change{ref: "j" + strconv.Itoa(i), key: fmt.Sprintf("user<%d>", i%7), meta: m})
	}
	for i := range 30 {
		leaves = append(leaves, &change{ref: "l" + strconv.Itoa(i), key: "gone", meta: meta(`{"phx_ref":"l` + strconv.Itoa(i) + `"}`)})
	}
	leaves = append(leaves, joins[3]) // a join that left in the same window
	out := tr.stamp("room:1", joins, leaves)
	if len(out) < 2 {
		t.Fatalf("%d parts, want the changes split", len(out))
	}
	nj, nl, leftSeen := 0, 0, false
	for i, o := range out {
		b := o.diff.appendJSON(nil)
		var check wireDiff
		if err := json.Unmarshal(b, &check); err != nil {
			t.Fatalf("part %d: %v: %s", i, err, b)
		}
		if len(b) > budget {
			t.Errorf("part %d: %d bytes, above %d", i, len(b), budget)
		}
		if o.diff.Clock != uint64(8+i) {
			t.Errorf("part %d: clock %d, want %d", i, o.diff.Clock, 8+i)
		}
		if o.diff.Last != (i == len(out)-1) {
			t.Errorf("part %d: last = %v", i, o.diff.Last)
		}
		for _, e := range o.diff.Joins {
			if leftSeen {
				t.Errorf("part %d: a join after a leave", i)
			}
			nj += len(e.Metas)
		}
		for _, e := range o.diff.Leaves {
			leftSeen = true
			nl += len(e.Metas)
		}
	}
	if nj != 40 || nl != 31 {
		t.Fatalf("%d joins and %d leaves sent, want 40 and 31", nj, nl)
	}
	if _, ok := tr.clocks["room:1"]; ok {
		t.Errorf("clock kept after the last part")
	}
}
