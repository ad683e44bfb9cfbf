package presence_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub/local"
)

// Track and Update refuse keys and metas over the limits, or unfit for a
// client's frame, with an error that says so, and neither change the
// table nor send a diff. The defaults apply to a tracker built without
// limits: a user name of 300 KB was repeated in every diff and state of
// its room, to every member.
func TestLocalRefusesEntriesOutsideTheLimits(t *testing.T) {
	ctx := context.Background()
	tr, d := setup(t) // NewLocal: the default limits
	ok := json.RawMessage(`{"online_at":1}`)
	cases := []struct {
		name string
		key  string
		meta json.RawMessage
		want error
	}{
		{"long key", strings.Repeat("k", presence.DefaultMaxKeyLength+1), ok, presence.ErrKeyTooLong},
		{"huge key", strings.Repeat("k", 300<<10), ok, presence.ErrKeyTooLong},
		{"large meta", "ann", json.RawMessage(`{"a":"` + strings.Repeat("m", presence.DefaultMaxMetaSize) + `"}`), presence.ErrMetaTooLarge},
		{"key not UTF-8", "ann\xff", ok, presence.ErrInvalidKey},
		{"meta not UTF-8", "ann", json.RawMessage("{\"a\":\"\xc3\"}"), presence.ErrNotObject},
		{"meta key not UTF-8", "ann", json.RawMessage("{\"\xff\":1}"), presence.ErrNotObject},
		{"meta not JSON", "ann", json.RawMessage(`{"a":`), presence.ErrNotObject},
		{"meta not an object", "ann", json.RawMessage(`[1]`), presence.ErrNotObject},
	}
	for _, c := range cases {
		if _, err := tr.Track(ctx, "room:1", "o1", c.key, c.meta); !errors.Is(err, c.want) {
			t.Errorf("Track with %s = %v, want %v", c.name, err, c.want)
		}
	}
	if st, _ := tr.List(ctx, "room:1"); len(st) != 0 || tr.Entries() != 0 {
		t.Fatalf("refused tracks left %v (%d entries)", st, tr.Entries())
	}
	// The longest key and the largest meta are accepted.
	longest := strings.Repeat("k", presence.DefaultMaxKeyLength)
	largest := json.RawMessage(`{"a":"` + strings.Repeat("m", presence.DefaultMaxMetaSize-8) + `"}`)
	if _, err := tr.Track(ctx, "room:1", "o1", longest, largest); err != nil {
		t.Fatalf("Track at the limits: %v", err)
	}
	for _, c := range cases[2:] {
		if c.want == presence.ErrInvalidKey {
			continue
		}
		if _, err := tr.Update(ctx, "room:1", "o1", longest, c.meta); !errors.Is(err, c.want) {
			t.Errorf("Update with %s = %v, want %v", c.name, err, c.want)
		}
	}
	if n := len(d.got); n != 1 {
		t.Fatalf("%d diffs, want the one of the accepted Track", n)
	}
	hits := tr.LimitHits()
	if got := hits["presence_key_length"](); got != 2 {
		t.Errorf("key length hits = %d, want 2", got)
	}
	if got := hits["presence_meta_size"](); got != 2 {
		t.Errorf("meta size hits = %d, want 2 (Track and Update)", got)
	}
}

// A topic takes at most MaxPerTopic entries: every join sends the whole
// room (presence_state), so the room's size multiplies every join's
// cost. Other topics, and updates, are not affected; a leave makes room.
func TestLocalBoundsEntriesPerTopic(t *testing.T) {
	ctx := context.Background()
	tr := presence.NewLocalLimited(local.New(), presence.Limits{MaxPerTopic: 3})
	meta := json.RawMessage(`{}`)
	for _, o := range []string{"o1", "o2", "o3"} {
		if _, err := tr.Track(ctx, "room:1", o, "u-"+o, meta); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Track(ctx, "room:1", "o4", "u-o4", meta); !errors.Is(err, presence.ErrTopicFull) {
		t.Fatalf("fourth Track = %v, want ErrTopicFull", err)
	}
	if _, err := tr.Track(ctx, "room:2", "o4", "u-o4", meta); err != nil {
		t.Fatalf("Track on another topic: %v", err)
	}
	if _, err := tr.Update(ctx, "room:1", "o1", "u-o1", json.RawMessage(`{"a":1}`)); err != nil {
		t.Fatalf("Update in a full topic: %v", err)
	}
	if err := tr.Untrack(ctx, "room:1", "o2", "u-o2"); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Track(ctx, "room:1", "o4", "u-o4", meta); err != nil {
		t.Fatalf("Track after a leave: %v", err)
	}
	if got := tr.LimitHits()["presence_topic_entries"](); got != 1 {
		t.Errorf("topic entries hits = %d, want 1", got)
	}
	if got := tr.Entries(); got != 4 {
		t.Errorf("Entries = %d, want 4", got)
	}
}

func TestLimitsDefaults(t *testing.T) {
	got := presence.Limits{MaxKeyLength: -5}.WithDefaults()
	want := presence.Limits{MaxKeyLength: -1, MaxMetaSize: presence.DefaultMaxMetaSize, MaxPerTopic: presence.DefaultMaxPerTopic, MaxPerOwner: presence.DefaultMaxPerOwner}
	if got != want {
		t.Fatalf("WithDefaults = %+v, want %+v", got, want)
	}
	tr := presence.NewLocalLimited(local.New(), presence.Limits{MaxKeyLength: -1})
	if _, err := tr.Track(context.Background(), "t", "o", strings.Repeat("k", 10000), nil); err != nil {
		t.Fatalf("-1 is no limit: %v", err)
	}
}

// One owner (one join) tracks at most MaxPerOwner keys on its topic: an
// application that tracks keys its client names would otherwise let one
// socket fill every room it joins. Untracking makes room again.
func TestLocalBoundsKeysPerOwner(t *testing.T) {
	ctx := context.Background()
	tr := presence.NewLocal(local.New())
	meta := json.RawMessage(`{}`)
	for i := range presence.DefaultMaxPerOwner {
		if _, err := tr.Track(ctx, "room:1", "o1", fmt.Sprintf("k%d", i), meta); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Track(ctx, "room:1", "o1", "one-more", meta); !errors.Is(err, presence.ErrTooManyKeys) {
		t.Fatalf("Track beyond the owner's limit = %v, want ErrTooManyKeys", err)
	}
	// Another owner, and the same owner on another topic, are not affected.
	if _, err := tr.Track(ctx, "room:1", "o2", "one-more", meta); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Track(ctx, "room:2", "o1", "one-more", meta); err != nil {
		t.Fatal(err)
	}
	if err := tr.Untrack(ctx, "room:1", "o1", "k0"); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Track(ctx, "room:1", "o1", "one-more", meta); err != nil {
		t.Fatalf("Track after an untrack: %v", err)
	}
	if err := tr.UntrackAll(ctx, "room:1", "o1"); err != nil {
		t.Fatal(err)
	}
	for i := range presence.DefaultMaxPerOwner {
		if _, err := tr.Track(ctx, "room:1", "o1", fmt.Sprintf("k%d", i), meta); err != nil {
			t.Fatalf("Track after UntrackAll: %v", err)
		}
	}
	if got := tr.LimitHits()["presence_join_entries"](); got != 1 {
		t.Errorf("join entries hits = %d, want 1", got)
	}
}
