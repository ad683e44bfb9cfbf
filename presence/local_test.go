package presence_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

type diffs struct {
	mu  sync.Mutex
	got []presence.Diff
}

func (d *diffs) SubscriberID() string { return "watcher" }
func (d *diffs) Deliver(m *pubsub.Message) {
	var diff presence.Diff
	if m.Event != "presence_diff" {
		return
	}
	if err := json.Unmarshal(m.Payload, &diff); err != nil {
		panic(err)
	}
	d.mu.Lock()
	d.got = append(d.got, diff)
	d.mu.Unlock()
}

func metaField(t *testing.T, raw json.RawMessage, field string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	s, _ := m[field].(string)
	return s
}

// setup returns an unpaced tracker (every change its own diff, at once)
// and the diffs of room:1; pace_test.go covers pacing.
func setup(t *testing.T) (*presence.Local, *diffs) {
	ps := local.New()
	d := &diffs{}
	if err := ps.Subscribe("room:1", d); err != nil {
		t.Fatal(err)
	}
	return presence.NewLocalWith(ps, presence.LocalOptions{MaxCoalesce: -1}), d
}

func TestTrackUpdateUntrackDiffs(t *testing.T) {
	ctx := context.Background()
	tr, d := setup(t)
	ref, err := tr.Track(ctx, "room:1", "owner1", "ann", json.RawMessage(`{"online_at":1}`))
	if err != nil {
		t.Fatal(err)
	}
	ref2, err := tr.Update(ctx, "room:1", "owner1", "ann", json.RawMessage(`{"online_at":2}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Untrack(ctx, "room:1", "owner1", "ann"); err != nil {
		t.Fatal(err)
	}
	if len(d.got) != 3 {
		t.Fatalf("got %d diffs, want 3", len(d.got))
	}
	join := d.got[0]
	if len(join.Leaves) != 0 || len(join.Joins["ann"].Metas) != 1 || metaField(t, join.Joins["ann"].Metas[0], "phx_ref") != ref {
		t.Fatalf("track diff = %+v", join)
	}
	upd := d.got[1]
	newMeta, oldMeta := upd.Joins["ann"].Metas[0], upd.Leaves["ann"].Metas[0]
	if metaField(t, newMeta, "phx_ref") != ref2 || metaField(t, newMeta, "phx_ref_prev") != ref || metaField(t, oldMeta, "phx_ref") != ref {
		t.Fatalf("update diff joins %s leaves %s", newMeta, oldMeta)
	}
	if ref2 == ref {
		t.Fatal("update kept the old phx_ref")
	}
	leave := d.got[2]
	if len(leave.Joins) != 0 || metaField(t, leave.Leaves["ann"].Metas[0], "phx_ref") != ref2 {
		t.Fatalf("untrack diff = %+v", leave)
	}
	state, _ := tr.List(ctx, "room:1")
	if len(state) != 0 {
		t.Fatalf("state after untrack = %v", state)
	}
}

func TestMultiDeviceAndUntrackAll(t *testing.T) {
	ctx := context.Background()
	tr, d := setup(t)
	for _, owner := range []string{"tab1", "tab2"} {
		if _, err := tr.Track(ctx, "room:1", owner, "ann", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Track(ctx, "room:1", "tab1", "ann", nil); err != presence.ErrAlreadyTracked {
		t.Fatalf("second track by one owner = %v, want ErrAlreadyTracked", err)
	}
	if _, err := tr.Track(ctx, "room:1", "tab1", "bob", json.RawMessage(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	state, _ := tr.List(ctx, "room:1")
	if len(state["ann"].Metas) != 2 || len(state["bob"].Metas) != 1 {
		t.Fatalf("state = %v, want ann with 2 metas and bob with 1", state)
	}
	if err := tr.UntrackAll(ctx, "room:1", "tab1"); err != nil {
		t.Fatal(err)
	}
	last := d.got[len(d.got)-1]
	if len(last.Leaves["ann"].Metas) != 1 || len(last.Leaves["bob"].Metas) != 1 {
		t.Fatalf("UntrackAll sent %+v, want one diff leaving ann (tab1) and bob", last)
	}
	state, _ = tr.List(ctx, "room:1")
	if len(state) != 1 || len(state["ann"].Metas) != 1 {
		t.Fatalf("state after UntrackAll = %v", state)
	}
}

func TestMetaMustBeObject(t *testing.T) {
	tr, _ := setup(t)
	for _, bad := range []string{`[]`, `"x"`, `1`, `null`, `{`} {
		if _, err := tr.Track(context.Background(), "room:1", "o", "k", json.RawMessage(bad)); err != presence.ErrNotObject {
			t.Errorf("Track with meta %s = %v, want ErrNotObject", bad, err)
		}
	}
}

func TestUpdateUntracked(t *testing.T) {
	tr, _ := setup(t)
	if _, err := tr.Update(context.Background(), "room:1", "o", "k", nil); err != presence.ErrNotTracked {
		t.Fatalf("Update of an untracked key = %v", err)
	}
	if err := tr.Untrack(context.Background(), "room:1", "o", "k"); err != nil {
		t.Fatalf("Untrack of an untracked key = %v", err)
	}
}

func TestRefsAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		r := presence.NewRef()
		if seen[r] {
			t.Fatalf("duplicate ref %q", r)
		}
		seen[r] = true
	}
}

func TestEmptyStateMarshalsAsObject(t *testing.T) {
	b, _ := presence.DiffPayload(nil, nil)
	if string(b) != `{"joins":{},"leaves":{}}` {
		t.Fatalf("empty diff = %s", b)
	}
}

func TestLocalEntries(t *testing.T) {
	ctx := context.Background()
	tr, _ := setup(t)
	var _ presence.EntryCounter = tr
	want := func(n int) {
		t.Helper()
		if got := tr.Entries(); got != n {
			t.Fatalf("Entries = %d, want %d", got, n)
		}
	}
	want(0)
	for _, e := range []struct{ topic, owner, key string }{
		{"room:1", "o1", "ann"}, {"room:1", "o2", "ann"}, {"room:1", "o1", "bob"}, {"room:2", "o1", "ann"},
	} {
		if _, err := tr.Track(ctx, e.topic, e.owner, e.key, json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	want(4)
	if _, err := tr.Track(ctx, "room:1", "o1", "ann", json.RawMessage(`{}`)); err != presence.ErrAlreadyTracked {
		t.Fatal(err)
	}
	if _, err := tr.Update(ctx, "room:1", "o1", "ann", json.RawMessage(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	want(4)
	_ = tr.Untrack(ctx, "room:1", "o2", "ann")
	_ = tr.Untrack(ctx, "room:1", "o2", "ann") // not tracked any more
	want(3)
	_ = tr.UntrackAll(ctx, "room:1", "o1")
	want(1)
	_ = tr.Close()
	want(0)
}
