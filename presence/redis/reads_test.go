package redis

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/presence"
)

// fakeReads is a read function whose reads block until released, each
// answering one row whose key names the read (1, 2, ...).
type fakeReads struct {
	mu      sync.Mutex
	n       int
	gates   map[int]chan struct{} // read i finishes when gates[i] closes; guarded by mu
	started chan int              // read i has begun
	ctxErr  chan error            // the ctx error a read saw when released
}

func newFakeReads() *fakeReads {
	return &fakeReads{gates: map[int]chan struct{}{}, started: make(chan int, 16), ctxErr: make(chan error, 16)}
}

// gate is read i's gate, made by whichever of read and release asks first.
func (f *fakeReads) gate(i int) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := f.gates[i]
	if g == nil {
		g = make(chan struct{})
		f.gates[i] = g
	}
	return g
}

// release lets read i finish. A read that starts meanwhile cannot take
// another's release (two reads were once released by two sends on one
// channel, and the read the first one let start took the second).
func (f *fakeReads) release(i int) { close(f.gate(i)) }

func (f *fakeReads) read(ctx context.Context, topic string) ([]row, error) {
	f.mu.Lock()
	f.n++
	i := f.n
	f.mu.Unlock()
	gate := f.gate(i)
	f.started <- i
	select {
	case <-gate:
	case <-ctx.Done():
		f.ctxErr <- ctx.Err()
		return nil, ctx.Err()
	}
	f.ctxErr <- ctx.Err()
	return []row{{key: strconv.Itoa(i)}}, nil
}

type got struct {
	read string
	err  error
}

// getAsync joins the read of topic at once (so the caller knows which
// reads were under way when it arrived) and waits for it in a goroutine.
func getAsync(t *testing.T, r *listReads, ctx context.Context, topic string) chan got {
	t.Helper()
	lr, err := r.join(topic)
	if err != nil {
		t.Fatal(err)
	}
	c := make(chan got, 1)
	go func() {
		rows, err := lr.wait(ctx)
		g := got{err: err}
		if len(rows) == 1 {
			g.read = rows[0].key
		}
		c <- g
	}()
	return c
}

// A List that arrives while a read of its topic is under way never takes
// that read's result: it waits for the next, which starts when the first
// ends and is shared by every List that arrived meanwhile. Other topics
// read on their own.
func TestListsShareOnlyReadsStartedAfterThem(t *testing.T) {
	f := newFakeReads()
	r := newListReads(time.Minute, f.read)
	defer r.close()
	ctx := context.Background()

	first := getAsync(t, r, ctx, "room")
	if i := <-f.started; i != 1 {
		t.Fatalf("read %d started, want 1", i)
	}
	// Arrive while read 1 runs: both must get read 2, and no read may
	// start before read 1 ends.
	second := getAsync(t, r, ctx, "room")
	third := getAsync(t, r, ctx, "room")
	other := getAsync(t, r, ctx, "elsewhere")
	if i := <-f.started; i != 2 {
		t.Fatalf("read %d started, want 2 (the other topic's)", i)
	}
	f.release(1)
	f.release(2)
	seen := map[string]bool{}
	for _, c := range []chan got{first, other} {
		g := <-c
		if g.err != nil {
			t.Fatal(g.err)
		}
		seen[g.read] = true
	}
	if !seen["1"] || !seen["2"] {
		t.Fatalf("first List and the other topic's got reads %v, want 1 and 2", seen)
	}
	// The waiting Lists' read starts only now.
	if i := <-f.started; i != 3 {
		t.Fatalf("read %d started, want 3", i)
	}
	select {
	case g := <-second:
		t.Fatalf("a List returned %+v before the read it waits for ended", g)
	default:
	}
	f.release(3)
	for _, c := range []chan got{second, third} {
		if g := <-c; g.err != nil || g.read != "3" {
			t.Fatalf("a List that arrived during read 1 got %+v, want read 3", g)
		}
	}
	f.mu.Lock()
	n := f.n
	f.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d reads for 4 Lists of two topics, want 3", n)
	}
	for range 3 {
		if err := <-f.ctxErr; err != nil {
			t.Fatalf("a read saw %v", err)
		}
	}
}

// A List that gives up (its ctx ends) leaves the read running for the
// others; close ends a read in flight and refuses later Lists.
func TestListReadsCancelAndClose(t *testing.T) {
	f := newFakeReads()
	r := newListReads(time.Minute, f.read)

	ctx, cancel := context.WithCancel(context.Background())
	impatient := getAsync(t, r, ctx, "room")
	<-f.started
	patient := getAsync(t, r, context.Background(), "room")
	cancel()
	if g := <-impatient; !errors.Is(g.err, context.Canceled) {
		t.Fatalf("a cancelled List returned %+v, want context.Canceled", g)
	}
	f.release(1)
	if err := <-f.ctxErr; err != nil {
		t.Fatalf("read 1 saw %v after a caller gave up", err)
	}
	<-f.started // the patient List's own read
	done := make(chan struct{})
	go func() { r.close(); close(done) }()
	if err := <-f.ctxErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("the read in flight at close saw %v, want context.Canceled", err)
	}
	<-done
	if g := <-patient; !errors.Is(g.err, context.Canceled) {
		t.Fatalf("the List whose read close ended returned %+v", g)
	}
	if _, err := r.get(context.Background(), "room"); !errors.Is(err, presence.ErrClosed) {
		t.Fatalf("a List after close returned %v, want presence.ErrClosed", err)
	}
}

// This node's entries sort and merge with the other nodes' rows as the
// rows themselves would: compareEntries and compareRowEntry agree with
// compareRows.
func TestEntryOrderIsRowOrder(t *testing.T) {
	tr := &Tracker{me: "n2"}
	rowOf := func(e *entry) row { return row{t: e.t, node: tr.me, ref: e.ref, key: e.key} }
	sign := func(c int) int { return min(max(c, -1), 1) }
	var entries []*entry
	var rows []row
	for _, key := range []string{"a", "b"} {
		for _, ts := range []int64{1, 2} {
			for _, ref := range []string{"r1", "r2"} {
				entries = append(entries, &entry{key: key, t: ts, ref: ref})
				for _, node := range []string{"n1", "n2", "n3"} {
					rows = append(rows, row{key: key, t: ts, ref: ref, node: node})
				}
			}
		}
	}
	for _, a := range entries {
		for _, b := range entries {
			if got, want := sign(compareEntries(a, b)), sign(compareRows(rowOf(a), rowOf(b))); got != want {
				t.Fatalf("compareEntries(%+v, %+v) = %d, compareRows says %d", a, b, got, want)
			}
		}
		for i := range rows {
			if got, want := sign(tr.compareRowEntry(&rows[i], a)), sign(compareRows(rows[i], rowOf(a))); got != want {
				t.Fatalf("compareRowEntry(%+v, %+v) = %d, compareRows says %d", rows[i], a, got, want)
			}
		}
	}
}
