package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/channelsd/channelsd/transport/wsclient"
)

// waitTimeout bounds each wait for a message, a reply or a close; a test
// that needs it has failed.
const waitTimeout = 20 * time.Second

// numbered is the payload the tests publish: a sequence number, or the
// end marker that closes a series.
type numbered struct {
	N     int    `json:"n,omitempty"`
	End   bool   `json:"end,omitempty"`
	Phase string `json:"phase,omitempty"`
	From  string `json:"from,omitempty"`
}

func decode(t testing.TB, m wsclient.Message) numbered {
	t.Helper()
	var p numbered
	if err := json.Unmarshal(m.Payload, &p); err != nil {
		t.Fatalf("undecodable payload in %s: %v", m, err)
	}
	return p
}

// join joins topic and fails the test unless the reply is ok.
func join(ctx context.Context, t testing.TB, ws *wsclient.Client, topic string) {
	t.Helper()
	r, err := ws.Join(ctx, topic, nil)
	if err != nil {
		t.Fatalf("join %s: %v", topic, err)
	}
	if r.Status != "ok" {
		t.Fatalf("join %s: %s", topic, r)
	}
}

// push sends event and returns its ref.
func push(t testing.TB, ws *wsclient.Client, topic, event string, payload any) string {
	t.Helper()
	ref, err := ws.Push(topic, event, payload)
	if err != nil {
		t.Fatalf("push %s %s: %v", topic, event, err)
	}
	return ref
}

// call pushes event and awaits its reply, failing the test unless it is
// ok.
func call(ctx context.Context, t testing.TB, ws *wsclient.Client, topic, event string, payload any) {
	t.Helper()
	r, err := ws.AwaitReply(ctx, push(t, ws, topic, event, payload))
	if err != nil {
		t.Fatalf("%s %s: %v", topic, event, err)
	}
	if r.Status != "ok" {
		t.Fatalf("%s %s: %s", topic, event, r)
	}
}

// awaitReplies awaits the replies to refs, in any order, failing the test
// unless each is ok.
func awaitReplies(ctx context.Context, t testing.TB, ws *wsclient.Client, refs []string) {
	t.Helper()
	for _, ref := range refs {
		r, err := ws.AwaitReply(ctx, ref)
		if err != nil {
			t.Fatalf("reply to ref %s: %v", ref, err)
		}
		if r.Status != "ok" {
			t.Fatalf("reply to ref %s: %s", ref, r)
		}
	}
}

// series takes from ws the messages of topic with one of events whose
// payload's phase is phase, in arrival order, up to and including the
// first end marker of that phase, which it does not return. Messages of
// other phases stay queued.
func series(ctx context.Context, t testing.TB, ws *wsclient.Client, topic, phase string, events ...string) []wsclient.Message {
	t.Helper()
	var got []wsclient.Message
	for {
		m, err := ws.Await(ctx, func(m wsclient.Message) bool {
			if m.Err != nil || m.Topic != topic || !slices.Contains(events, m.Event) {
				return false
			}
			var p numbered
			return json.Unmarshal(m.Payload, &p) == nil && p.Phase == phase
		})
		if err != nil {
			t.Fatalf("awaiting %v of phase %q on %s after %d message(s): %v", events, phase, topic, len(got), err)
		}
		if decode(t, m).End {
			return got
		}
		got = append(got, m)
	}
}

// checkSequence fails the test unless msgs are exactly the numbers 1..n,
// each once, in order.
func checkSequence(t testing.TB, who string, msgs []wsclient.Message, n int) {
	t.Helper()
	nums := make([]int, len(msgs))
	for i, m := range msgs {
		nums[i] = decode(t, m).N
	}
	want := make([]int, n)
	for i := range want {
		want[i] = i + 1
	}
	if !slices.Equal(nums, want) {
		t.Errorf("%s received %d message(s), want 1..%d once each in order: %s", who, len(nums), n, summarize(nums))
	}
}

// summarize shows where a sequence departs from 1, 2, 3, ...
func summarize(nums []int) string {
	for i, v := range nums {
		if v != i+1 {
			lo, hi := max(0, i-3), min(len(nums), i+5)
			return fmt.Sprintf("first departure at index %d: ...%v...", i, nums[lo:hi])
		}
	}
	return fmt.Sprintf("1..%d then nothing", len(nums))
}

// timeout returns a context for one step of a test.
func timeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// awaitSubscribed returns once broadcasts on topic from from reach every
// client in to. A join is answered before the node's Redis SUBSCRIBE for a
// topic new to it has been applied (see pubsub/redis), so a broadcast from
// another node right after the join may miss it; the ordering checks are
// about what happens once the subscription is live. It probes with
// broadcasts of phase "sync" (left queued, never counted by series),
// awaiting each for 300 ms, for at most 10 s, and logs how long it took.
func awaitSubscribed(ctx context.Context, t testing.TB, topic string, from *wsclient.Client, to map[string]*wsclient.Client) {
	t.Helper()
	began := time.Now()
	pending := maps.Clone(to)
	for try := 1; ; try++ {
		call(ctx, t, from, topic, "broadcast", numbered{N: try, Phase: "sync"})
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		for who, ws := range pending {
			if _, err := ws.Await(pctx, isPhase(topic, "broadcast", "sync")); err == nil {
				delete(pending, who)
			}
		}
		cancel()
		if len(pending) == 0 {
			if try > 1 {
				t.Logf("broadcasts on %s reached every subscriber after %d probes (%v)", topic, try, time.Since(began).Round(time.Millisecond))
			}
			return
		}
		if time.Since(began) > 10*time.Second {
			t.Fatalf("broadcasts on %s still miss %v after %d probes in %v", topic, slices.Collect(maps.Keys(pending)), try, time.Since(began).Round(time.Millisecond))
		}
	}
}

// isPhase matches messages of event on topic whose payload has the phase.
func isPhase(topic, event, phase string) func(wsclient.Message) bool {
	return func(m wsclient.Message) bool {
		if !wsclient.IsEvent(topic, event)(m) {
			return false
		}
		var p numbered
		return json.Unmarshal(m.Payload, &p) == nil && p.Phase == phase
	}
}
