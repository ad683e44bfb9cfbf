package local

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// TestPublishSweepsIdleHistories checks that memory follows the live
// topics with no goroutine of its own: publishes to one topic drop the
// histories of the others once they are idle for their TTL.
func TestPublishSweepsIdleHistories(t *testing.T) {
	p := New()
	p.hist.sweepEvery = 5 * time.Millisecond
	p.SetHistoryPolicy(func(topic string) pubsub.HistoryOptions {
		if topic == "live" {
			return pubsub.HistoryOptions{Size: 4, TTL: time.Minute}
		}
		return pubsub.HistoryOptions{Size: 4, TTL: 20 * time.Millisecond}
	})
	ctx := context.Background()
	old, _ := p.PublishAt(ctx, &pubsub.Message{Topic: "idle0"})
	for i := 1; i < 100; i++ {
		_ = p.Publish(ctx, &pubsub.Message{Topic: fmt.Sprint("idle", i)})
	}
	histories := func() int {
		p.hist.mu.RLock()
		defer p.hist.mu.RUnlock()
		return len(p.hist.m)
	}
	if n := histories(); n < 90 {
		t.Fatalf("%d histories right after 100 topics broadcast, want about 100", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for histories() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d histories left 5s after their 20ms TTL, want only the live one", histories())
		}
		_ = p.Publish(ctx, &pubsub.Message{Topic: "live"})
		time.Sleep(time.Millisecond) // let TTLs pass; the sweep is what is awaited
	}
	pos, _ := p.PublishAt(ctx, &pubsub.Message{Topic: "idle0"})
	if pos.Epoch == old.Epoch || pos.Offset != 1 {
		t.Fatalf("broadcast to a swept topic got %s, want offset 1 of a new epoch (was %s)", pos, old)
	}
}

func TestEpochsAreValidAndDistinct(t *testing.T) {
	seen := make(map[string]bool)
	for i := 0; i < 1000; i++ {
		e := newEpoch()
		if !pubsub.ValidEpoch(e) || len(e) != 12 {
			t.Fatalf("epoch %q: want 12 characters of [A-Za-z0-9_-]", e)
		}
		if seen[e] {
			t.Fatalf("epoch %q drawn twice in 1000", e)
		}
		seen[e] = true
	}
}
