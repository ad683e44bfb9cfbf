package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock runs pacing by hand: the test moves the time and fires the
// timers that are due.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	done bool // fired or stopped; guarded by c.mu
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) stopper {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// advance moves the time by d, running each timer that falls due, in
// this goroutine, as a real timer's goroutine would, at its due time.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		for _, t := range c.timers {
			if !t.done && !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		next.done = true
		c.now = next.at
		c.mu.Unlock()
		next.f()
	}
}

// pending says whether a timer waits, and when it is due.
func (c *fakeClock) pending() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.timers {
		if !t.done {
			return t.at.Sub(c.now), true
		}
	}
	return 0, false
}

// diffLog records the presence_diffs of a topic.
type diffLog struct {
	mu  sync.Mutex
	got []Diff
}

func (d *diffLog) SubscriberID() string { return "log" }
func (d *diffLog) Deliver(m *pubsub.Message) {
	var diff Diff
	if err := json.Unmarshal(m.Payload, &diff); err != nil {
		panic(fmt.Sprintf("presence_diff %s: %v", m.Payload, err))
	}
	d.mu.Lock()
	d.got = append(d.got, diff)
	d.mu.Unlock()
}

func (d *diffLog) diffs() []Diff {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.got)
}

func pacedLocal(t *testing.T, maxCoalesce time.Duration) (*Local, *fakeClock, *diffLog) {
	t.Helper()
	ps := local.New()
	log := &diffLog{}
	if err := ps.Subscribe("room:1", log); err != nil {
		t.Fatal(err)
	}
	l := NewLocalWith(ps, LocalOptions{MaxCoalesce: maxCoalesce})
	c := &fakeClock{now: time.Unix(1000, 0)}
	l.clock = c
	t.Cleanup(func() { _ = l.Close() })
	return l, c, log
}

func refsOf(e Entry) []string {
	var refs []string
	for _, m := range e.Metas {
		var r struct {
			Ref string `json:"phx_ref"`
		}
		_ = json.Unmarshal(m, &r)
		refs = append(refs, r.Ref)
	}
	return refs
}

// A change on a quiet topic goes out at once; the changes within the
// window after it go out together at its end, as one diff; the window
// is WindowPerMember per entry, up to MaxCoalesce.
func TestLocalPacesDiffs(t *testing.T) {
	ctx := context.Background()
	l, c, log := pacedLocal(t, 35*time.Millisecond)
	refA, _ := l.Track(ctx, "room:1", "o1", "ann", json.RawMessage(`{}`))
	if got := log.diffs(); len(got) != 1 || !slices.Equal(refsOf(got[0].Joins["ann"]), []string{refA}) {
		t.Fatalf("first change: diffs %+v, want ann's join at once", got)
	}
	refB, _ := l.Track(ctx, "room:1", "o2", "bob", json.RawMessage(`{}`))
	refC, _ := l.Track(ctx, "room:1", "o3", "cat", json.RawMessage(`{}`))
	if n := len(log.diffs()); n != 1 {
		t.Fatalf("changes within the window sent %d diffs at once", n-1)
	}
	// The window is taken when the batch opens (bob's join: two
	// entries), from ann's diff.
	if d, ok := c.pending(); !ok || d != 2*WindowPerMember {
		t.Fatalf("flush due in %v (%v), want %v", d, ok, 2*WindowPerMember)
	}
	c.advance(2 * WindowPerMember)
	got := log.diffs()
	if len(got) != 2 || len(got[1].Leaves) != 0 || !slices.Equal(refsOf(got[1].Joins["bob"]), []string{refB}) || !slices.Equal(refsOf(got[1].Joins["cat"]), []string{refC}) {
		t.Fatalf("at the window's end: %+v, want one diff joining bob and cat", got)
	}

	// The next change, at once: the window runs from that diff and is
	// taken with the entries after the change (two), 20ms.
	if err := l.Untrack(ctx, "room:1", "o1", "ann"); err != nil {
		t.Fatal(err)
	}
	if d, _ := c.pending(); d != 2*WindowPerMember {
		t.Fatalf("flush due in %v, want %v", d, 2*WindowPerMember)
	}
	c.advance(time.Hour)
	got = log.diffs()
	if len(got) != 3 || !slices.Equal(refsOf(got[2].Leaves["ann"]), []string{refA}) {
		t.Fatalf("ann's leave: %+v", got)
	}

	// An hour later the topic is quiet again: at once.
	if _, err := l.Track(ctx, "room:1", "o4", "dan", json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	if n := len(log.diffs()); n != 4 {
		t.Fatalf("a change on a quiet topic waited: %d diffs", n)
	}
	// The ceiling: 40 entries would be 400ms, MaxCoalesce is 35ms.
	for i := range 40 {
		if _, err := l.Track(ctx, "room:1", fmt.Sprint("x", i), "x", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if d, _ := c.pending(); d != 35*time.Millisecond {
		t.Fatalf("window of a big room: %v, want MaxCoalesce", d)
	}
}

// A join and its leave within one window cancel out unless a List
// returned the join meanwhile: a subscriber may show it, so both go out,
// in one diff, which clients apply joins first. An update is the leave of
// the old ref and the join of the new.
func TestLocalPacedJoinLeave(t *testing.T) {
	ctx := context.Background()
	l, c, log := pacedLocal(t, time.Second)
	if _, err := l.Track(ctx, "room:1", "o0", "zed", json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	_, _ = l.Track(ctx, "room:1", "o1", "ann", json.RawMessage(`{}`)) // unseen, then gone
	_ = l.Untrack(ctx, "room:1", "o1", "ann")
	refB, _ := l.Track(ctx, "room:1", "o2", "bob", json.RawMessage(`{}`))
	if st, _ := l.List(ctx, "room:1"); len(st["bob"].Metas) != 1 {
		t.Fatalf("List: %v", st)
	}
	_ = l.Untrack(ctx, "room:1", "o2", "bob") // listed: its leave is sent
	refZ2, _ := l.Update(ctx, "room:1", "o0", "zed", json.RawMessage(`{"away":true}`))
	c.advance(time.Hour)
	got := log.diffs()
	if len(got) != 2 {
		t.Fatalf("%d diffs, want the first join and one paced diff: %+v", len(got), got)
	}
	d := got[1]
	if _, ok := d.Joins["ann"]; ok {
		t.Fatalf("ann joined and left unseen, yet the diff has her: %+v", d)
	}
	if _, ok := d.Leaves["ann"]; ok {
		t.Fatalf("ann joined and left unseen, yet the diff has her leave: %+v", d)
	}
	if !slices.Equal(refsOf(d.Joins["bob"]), []string{refB}) || !slices.Equal(refsOf(d.Leaves["bob"]), []string{refB}) {
		t.Fatalf("bob was listed: his join and leave must both go out: %+v", d)
	}
	if !slices.Equal(refsOf(d.Joins["zed"]), []string{refZ2}) || len(d.Leaves["zed"].Metas) != 1 {
		t.Fatalf("zed's update: %+v", d)
	}
	if st, _ := l.List(ctx, "room:1"); len(st) != 1 || !slices.Equal(refsOf(st["zed"]), []string{refZ2}) {
		t.Fatalf("List after: %v", st)
	}
}

// A topic whose last entry left keeps its table until the paced leave is
// out, then goes; Close drops what waits, and its timers, and returns
// once no flush runs.
func TestLocalPacedLastLeaveAndClose(t *testing.T) {
	ctx := context.Background()
	l, c, log := pacedLocal(t, time.Second)
	_, _ = l.Track(ctx, "room:1", "o1", "ann", json.RawMessage(`{}`))
	_, _ = l.Track(ctx, "room:1", "o2", "bob", json.RawMessage(`{}`)) // waits
	_ = l.Untrack(ctx, "room:1", "o2", "bob")                         // cancels it
	_ = l.Untrack(ctx, "room:1", "o1", "ann")                         // waits: a batch is open
	if len(l.topics) != 1 {
		t.Fatal("the table went before its leave was sent")
	}
	c.advance(time.Hour)
	if got := log.diffs(); len(got) != 2 || len(got[1].Leaves["ann"].Metas) != 1 || len(got[1].Joins) != 0 || len(got[1].Leaves) != 1 {
		t.Fatalf("diffs %+v", got)
	}
	if len(l.topics) != 0 {
		t.Fatal("an empty topic kept its table after its last diff")
	}
	_, _ = l.Track(ctx, "room:1", "o1", "ann", json.RawMessage(`{}`))
	_, _ = l.Track(ctx, "room:1", "o2", "bob", json.RawMessage(`{}`))
	if _, ok := c.pending(); !ok {
		t.Fatal("no flush scheduled")
	}
	_ = l.Close()
	if _, ok := c.pending(); ok {
		t.Fatal("Close left a timer")
	}
	if n := len(log.diffs()); n != 3 {
		t.Fatalf("%d diffs after Close, want 3", n)
	}
}

// client follows a topic as the JavaScript Presence class does
// (phoenix.js Presence: syncState, syncDiff, and the diffs that arrive
// before the state are kept and applied after it). It records every
// diff it receives, to check that pacing neither repeats nor reorders a
// change.
type client struct {
	id string

	mu      sync.Mutex
	synced  bool
	pending []Diff
	state   map[string][]string // key -> phx_refs, in order
	diffs   []Diff
}

func (c *client) SubscriberID() string { return c.id }

func (c *client) Deliver(m *pubsub.Message) {
	if m.Event != "presence_diff" {
		return
	}
	var d Diff
	if err := json.Unmarshal(m.Payload, &d); err != nil {
		panic(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.diffs = append(c.diffs, d)
	if !c.synced {
		c.pending = append(c.pending, d)
		return
	}
	c.syncDiff(d)
}

// pushState is presence_state arriving: what the socket's queue holds
// after the diffs delivered before it.
func (c *client) pushState(s State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// syncState: what the state lacks leaves, what it adds joins.
	joins, leaves := State{}, State{}
	for k, refs := range c.state {
		if _, ok := s[k]; !ok {
			for _, r := range refs {
				leaves.Add(k, metaWithRef(r))
			}
		}
	}
	for k, e := range s {
		cur := c.state[k]
		newRefs := refsOf(e)
		for _, m := range e.Metas {
			if r := refsOf(Entry{Metas: []json.RawMessage{m}})[0]; !slices.Contains(cur, r) {
				joins.Add(k, m)
			}
		}
		for _, r := range cur {
			if !slices.Contains(newRefs, r) {
				leaves.Add(k, metaWithRef(r))
			}
		}
	}
	if c.state == nil {
		c.state = map[string][]string{}
	}
	c.syncDiff(Diff{Joins: joins, Leaves: leaves})
	for _, d := range c.pending {
		c.syncDiff(d)
	}
	c.pending, c.synced = nil, true
}

func metaWithRef(r string) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"phx_ref": r})
	return b
}

// syncDiff is phoenix.js's: joins first (a key's current metas whose
// refs the join does not carry are kept ahead of the joined ones), then
// leaves by ref.
func (c *client) syncDiff(d Diff) {
	for k, e := range d.Joins {
		joined := refsOf(e)
		var kept []string
		for _, r := range c.state[k] {
			if !slices.Contains(joined, r) {
				kept = append(kept, r)
			}
		}
		c.state[k] = append(kept, joined...)
	}
	for k, e := range d.Leaves {
		cur, ok := c.state[k]
		if !ok {
			continue
		}
		gone := refsOf(e)
		cur = slices.DeleteFunc(slices.Clone(cur), func(r string) bool { return slices.Contains(gone, r) })
		if len(cur) == 0 {
			delete(c.state, k)
		} else {
			c.state[k] = cur
		}
	}
}

func (c *client) view() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for k, refs := range c.state {
		out[k] = slices.Sorted(slices.Values(refs))
	}
	return out
}

func viewOf(s State) map[string][]string {
	out := map[string][]string{}
	for k, e := range s {
		out[k] = slices.Sorted(slices.Values(refsOf(e)))
	}
	return out
}

// Joiners subscribe, track themselves and push the state they list, as a
// channel does (AfterJoin), all at once, while others update and leave:
// once the last window is out, every joiner's state plus the diffs it
// received, merged as the JavaScript class merges them, is the table; and
// no diff repeats a change another diff carried, or brings a leave before
// its join.
func TestLocalPacedJoinersConvergeUnderConcurrentJoins(t *testing.T) {
	ctx := context.Background()
	ps := local.New()
	l := NewLocalWith(ps, LocalOptions{MaxCoalesce: 3 * time.Millisecond})
	defer l.Close()
	const topics, joiners = 3, 150
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		clients = map[string][]*client{}
	)
	for i := range joiners {
		wg.Go(func() {
			topic := fmt.Sprint("room:", i%topics)
			c := &client{id: fmt.Sprint("c", i)}
			if err := ps.Subscribe(topic, c); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			clients[topic] = append(clients[topic], c)
			mu.Unlock()
			key := fmt.Sprint("user", i%50) // several sockets per key
			if _, err := l.Track(ctx, topic, c.id, key, json.RawMessage(`{"n":1}`)); err != nil {
				t.Error(err)
				return
			}
			st, err := l.List(ctx, topic)
			if err != nil {
				t.Error(err)
				return
			}
			c.pushState(st)
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for range rng.IntN(4) {
				switch rng.IntN(3) {
				case 0:
					_, _ = l.Update(ctx, topic, c.id, key, json.RawMessage(`{"n":2}`))
				case 1:
					_ = l.Untrack(ctx, topic, c.id, key)
				case 2:
					_, _ = l.Track(ctx, topic, c.id, "extra", json.RawMessage(`{}`))
				}
			}
		})
	}
	wg.Wait()
	flushAll(l)
	for topic, cs := range clients {
		st, _ := l.List(ctx, topic)
		want := viewOf(st)
		for _, c := range cs {
			if got := c.view(); !maps.EqualFunc(got, want, slices.Equal) {
				t.Fatalf("%s on %s: merged view\n%v\nwant\n%v", c.id, topic, got, want)
			}
			joined, left := map[string]int{}, map[string]int{}
			for i, d := range c.diffs {
				for _, e := range d.Joins {
					for _, r := range refsOf(e) {
						if _, dup := joined[r]; dup {
							t.Fatalf("%s: ref %s joined in two diffs", c.id, r)
						}
						if _, ok := left[r]; ok {
							t.Fatalf("%s: ref %s left before it joined", c.id, r)
						}
						joined[r] = i
					}
				}
				for _, e := range d.Leaves {
					for _, r := range refsOf(e) {
						if _, dup := left[r]; dup {
							t.Fatalf("%s: ref %s left in two diffs", c.id, r)
						}
						left[r] = i
					}
				}
			}
		}
	}
}

// flushAll sends every batch waiting for its window now, as if every
// window ended, and waits for the timers that already fired.
func flushAll(l *Local) {
	l.mu.Lock()
	topics := maps.Clone(l.topics)
	l.mu.Unlock()
	for name, t := range topics {
		t.mu.Lock()
		if t.timer != nil && t.timer.Stop() {
			t.timer = nil
			l.flushes.Done()
			if !t.gone {
				l.sendPendingLocked(name, t)
				l.dropIfEmptyLocked(name, t)
			}
		}
		t.mu.Unlock()
	}
	l.flushes.Wait()
}

// The window doubles while a topic's diffs reach more than
// DeliveriesPerChange members per change, halves when they reach fewer
// than half that, and stays within [DiffWindow, hi]; 0 stands for the
// floor.
func TestAdaptWindow(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		w                time.Duration
		changes, members int
		want             time.Duration
	}{
		{0, 1, 100, 0},       // the floor (100 members: 1000ms) is hi already
		{0, 1, 20, 400 * ms}, // floor 200ms, doubled
		{400 * ms, 1, 20, 800 * ms},
		{800 * ms, 1, 20, 1000 * ms}, // capped
		{800 * ms, 5, 20, 800 * ms},  // 4 deliveries per change: kept
		{800 * ms, 10, 20, 400 * ms}, // 2: halved
		{400 * ms, 10, 20, 0},        // halved to the floor (200ms): 0
		{0, 3, 2, 0},                 // a small room stays at its floor
		{0, 0, 0, 0},
	} {
		if got := AdaptWindow(c.w, c.changes, c.members, 0, 1000*ms); got != c.want {
			t.Errorf("AdaptWindow(%v, %d changes, %d members) = %v, want %v", c.w, c.changes, c.members, got, c.want)
		}
	}
	if got := DiffWindow(0, 30*ms, 500*ms); got != 30*ms {
		t.Errorf("DiffWindow of an empty room = %v, want its floor", got)
	}
}
