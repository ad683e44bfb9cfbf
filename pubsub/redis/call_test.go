package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

func TestCallReachesTheNamedNodeAndReturnsItsAnswer(t *testing.T) {
	srv := startRedis(t)
	a, b, c := node(t, srv, "a"), node(t, srv, "b"), node(t, srv, "c")
	var mu sync.Mutex
	seen := map[string]int{}
	for _, p := range []*PubSub{a, b, c} {
		p.HandleCalls("echo", func(ctx context.Context, req []byte) []byte {
			mu.Lock()
			seen[p.NodeID()]++
			mu.Unlock()
			if _, ok := ctx.Deadline(); !ok {
				return []byte("no deadline")
			}
			return append([]byte(p.NodeID()+":"), req...)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Binary-safe, and larger than one TCP segment.
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 20000)
	for i := range 20 {
		to := []string{"b", "c"}[i%2]
		got, err := a.Call(ctx, to, "echo", big)
		if err != nil {
			t.Fatalf("call %d to %s: %v", i, to, err)
		}
		if want := append([]byte(to+":"), big...); !bytes.Equal(got, want) {
			t.Fatalf("call %d to %s answered %d bytes %q..., want %q...", i, to, len(got), got[:min(len(got), 12)], want[:12])
		}
	}
	// A call to itself runs in place.
	if got, err := a.Call(ctx, "a", "echo", []byte("x")); err != nil || string(got) != "a:x" {
		t.Fatalf("self call = %q, %v", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["a"] != 1 || seen["b"] != 10 || seen["c"] != 10 {
		t.Fatalf("handled per node = %v, want a:1 b:10 c:10 (each call once, by the node named)", seen)
	}
	if s := a.Stats(); s.CallsSent != 20 {
		t.Fatalf("a.CallsSent = %d, want 20", s.CallsSent)
	}
	if s := b.Stats(); s.CallsServed != 10 {
		t.Fatalf("b.CallsServed = %d, want 10", s.CallsServed)
	}
}

func TestCallToAbsentNodeFailsAtOnce(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	b.HandleCalls("echo", func(_ context.Context, req []byte) []byte { return req })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.Call(ctx, "b", "echo", nil); err != nil {
		t.Fatalf("call to a live node: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := a.Call(ctx, "b", "echo", nil)
	if !errors.Is(err, pubsub.ErrNoNode) {
		t.Fatalf("call to a closed node: %v, want ErrNoNode", err)
	}
	if _, err := a.Call(ctx, "never-was", "echo", nil); !errors.Is(err, pubsub.ErrNoNode) {
		t.Fatalf("call to an unknown node: %v, want ErrNoNode", err)
	}
	// "At once" means well before the caller's deadline, not a timing
	// target: the deadline is 10 s away.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("ErrNoNode took %v: it should not wait for the deadline", d)
	}
}

func TestCallWithoutHandlerIsRejected(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	b.HandleCalls("echo", func(_ context.Context, req []byte) []byte { return req })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Call(ctx, "b", "other", nil); !errors.Is(err, pubsub.ErrCallRejected) {
		t.Fatalf("call for an unhandled service: %v, want ErrCallRejected", err)
	}
	if s := b.Stats(); s.CallsRejected != 1 {
		t.Fatalf("b.CallsRejected = %d, want 1", s.CallsRejected)
	}
}

func TestCallsBeyondMaxCallsAreRejected(t *testing.T) {
	srv := startRedis(t)
	a := node(t, srv, "a")
	b := node(t, srv, "b", func(o *Options) { o.MaxCalls = 2 })
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	b.HandleCalls("hold", func(ctx context.Context, req []byte) []byte {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return req
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := a.Call(ctx, "b", "hold", []byte{byte(i)})
			errs <- err
		}()
	}
	<-started
	<-started
	if _, err := a.Call(ctx, "b", "hold", nil); !errors.Is(err, pubsub.ErrCallRejected) {
		t.Fatalf("third call with MaxCalls 2 busy: %v, want ErrCallRejected", err)
	}
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("held call: %v", err)
		}
	}
}

func TestCallHandlerSeesTheCallersDeadline(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	left := make(chan time.Duration, 1)
	ended := make(chan struct{})
	callerGone := make(chan struct{})
	b.HandleCalls("deadline", func(ctx context.Context, _ []byte) []byte {
		d, _ := ctx.Deadline()
		left <- time.Until(d)
		<-ctx.Done() // the handler is told when the caller stops waiting
		close(ended)
		<-callerGone // answer late, after the caller gave up
		return []byte("late")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := a.Call(ctx, "b", "deadline", nil)
	close(callerGone)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call past its deadline: %v", err)
	}
	if d := <-left; d <= 0 || d > 300*time.Millisecond {
		t.Fatalf("handler's deadline %v away, want within the caller's 300ms", d)
	}
	<-ended
	// The late answer finds no one waiting and is dropped.
	eventually(t, 5*time.Second, "late reply sent", func() bool { return b.Stats().CallsServed == 1 })
	a.calls.mu.Lock()
	defer a.calls.mu.Unlock()
	if n := len(a.calls.pending); n != 0 {
		t.Fatalf("%d calls still pending after their caller gave up", n)
	}
}

func TestDecodeCallFrameRoundTrip(t *testing.T) {
	c := callFrame{id: 42, replyTo: "node-1", service: "lp", wait: 1500 * time.Millisecond, body: []byte("body\x00")}
	gc, gr, err := decodeCallFrame(appendCall(nil, c))
	if err != nil || gr != nil || gc.id != 42 || gc.replyTo != "node-1" || gc.service != "lp" || gc.wait != c.wait || !bytes.Equal(gc.body, c.body) {
		t.Fatalf("call round trip = %+v %+v %v", gc, gr, err)
	}
	r := replyFrame{id: 7, status: replyRejected, body: []byte("x")}
	gc, gr, err = decodeCallFrame(appendReply(nil, r))
	if err != nil || gc != nil || gr.id != 7 || gr.status != replyRejected || string(gr.body) != "x" {
		t.Fatalf("reply round trip = %+v %+v %v", gc, gr, err)
	}
	for _, bad := range [][]byte{nil, {'x'}, {'c'}, {'c', 1, 0}, {'r', 1}, {'C', 1, 1, 'a', 0, 0, 1}} {
		if _, _, err := decodeCallFrame(bad); err == nil {
			t.Errorf("decodeCallFrame(%q) accepted", bad)
		}
	}
}

func FuzzDecodeCallFrame(f *testing.F) {
	f.Add(appendCall(nil, callFrame{id: 1, replyTo: "a", service: "lp", wait: time.Second, body: []byte("x")}))
	f.Add(appendReply(nil, replyFrame{id: 1, body: []byte("y")}))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, r, err := decodeCallFrame(data)
		switch {
		case err != nil:
			if c != nil || r != nil {
				t.Fatal("error with a result")
			}
		case c != nil:
			// Re-encoding a decoded call gives the same bytes, except
			// for a non-minimal varint the decoder tolerated.
			again, _, err := decodeCallFrame(appendCall(nil, *c))
			if err != nil || fmt.Sprint(*again) != fmt.Sprint(*c) {
				t.Fatalf("call does not round-trip: %+v vs %+v (%v)", again, c, err)
			}
		case r != nil:
			_, again, err := decodeCallFrame(appendReply(nil, *r))
			if err != nil || fmt.Sprint(*again) != fmt.Sprint(*r) {
				t.Fatalf("reply does not round-trip: %+v vs %+v (%v)", again, r, err)
			}
		default:
			t.Fatal("no error and no result")
		}
	})
}
