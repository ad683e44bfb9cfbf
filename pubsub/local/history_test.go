package local_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/historytest"
	"github.com/channelsd/channelsd/pubsub/local"
)

func TestHistoryContract(t *testing.T) {
	historytest.Run(t, func(t *testing.T) pubsub.History {
		ps := local.New()
		t.Cleanup(func() { _ = ps.Close() })
		return ps
	}, historytest.Options{MinTTL: 100 * time.Millisecond, Timeout: 5 * time.Second})
}

func TestHistoryStatsCountLiveHistories(t *testing.T) {
	ps := local.New()
	ps.SetHistoryPolicy(func(topic string) pubsub.HistoryOptions {
		switch topic {
		case "long":
			return pubsub.HistoryOptions{Size: 10, TTL: time.Minute}
		case "short":
			return pubsub.HistoryOptions{Size: 10, TTL: 50 * time.Millisecond}
		}
		return pubsub.HistoryOptions{}
	})
	for i := 0; i < 3; i++ {
		_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "long"})
	}
	for i := 0; i < 20; i++ {
		_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "short"})
		_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "plain"})
	}
	// "short" may already have expired on a slow machine; "long" cannot.
	if st := ps.HistoryStats(); st != (pubsub.HistoryStats{Topics: 2, Retained: 13}) && st != (pubsub.HistoryStats{Topics: 1, Retained: 3}) {
		t.Fatalf("stats = %+v, want {2 13} (or {1 3} once short expired)", st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ps.HistoryStats() != (pubsub.HistoryStats{Topics: 1, Retained: 3}) {
		if time.Now().After(deadline) {
			t.Fatalf("stats = %+v 5s after short's TTL of 50ms, want {1 3}", ps.HistoryStats())
		}
		time.Sleep(10 * time.Millisecond) // polling an expiry: no event to await
	}
}

func TestHistoryFollowsPolicySizeChange(t *testing.T) {
	ps := local.New()
	size := 10
	ps.SetHistoryPolicy(func(string) pubsub.HistoryOptions { return pubsub.HistoryOptions{Size: size, TTL: time.Minute} })
	var top pubsub.Position
	for i := 0; i < 20; i++ {
		top, _ = ps.PublishAt(context.Background(), &pubsub.Message{Topic: "t", Event: fmt.Sprint(i + 1)})
	}
	events := func() (out []string) {
		res, err := ps.ReadHistory(context.Background(), "t", pubsub.HistoryQuery{Last: 100})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range res.Messages {
			out = append(out, m.Event)
		}
		return out
	}
	size = 5
	if got := fmt.Sprint(events()); got != "[16 17 18 19 20]" {
		t.Fatalf("after shrinking to 5: %s, want the newest five", got)
	}
	size = 8
	if got := fmt.Sprint(events()); got != "[16 17 18 19 20]" {
		t.Fatalf("after growing to 8: %s, want the five still held", got)
	}
	pos, _ := ps.PublishAt(context.Background(), &pubsub.Message{Topic: "t", Event: "21"})
	if pos != (pubsub.Position{Epoch: top.Epoch, Offset: 21}) {
		t.Fatalf("broadcast after resizing got %s, want %s:21", pos, top.Epoch)
	}
	if got := fmt.Sprint(events()); got != "[16 17 18 19 20 21]" {
		t.Fatalf("after one more: %s", got)
	}
}

func TestHistoryClosedRefuses(t *testing.T) {
	ps := local.New()
	ps.SetHistoryPolicy(func(string) pubsub.HistoryOptions { return pubsub.HistoryOptions{Size: 1} })
	_ = ps.Close()
	if _, err := ps.PublishAt(context.Background(), &pubsub.Message{Topic: "t"}); err != pubsub.ErrClosed {
		t.Fatalf("PublishAt after Close = %v, want ErrClosed", err)
	}
	if _, err := ps.ReadHistory(context.Background(), "t", pubsub.HistoryQuery{}); err != pubsub.ErrClosed {
		t.Fatalf("ReadHistory after Close = %v, want ErrClosed", err)
	}
}

// echoSub publishes a reply to its own topic from inside Deliver, as a
// HandleOut that broadcasts or presence leaving on a channel error does,
// and records every offset it is handed.
type echoSub struct {
	ps      *local.PubSub
	offsets chan uint64
}

func (s *echoSub) SubscriberID() string { return "echo" }

func (s *echoSub) Deliver(m *pubsub.Message) {
	s.offsets <- m.Pos.Offset
	if m.Event == "ping" {
		s.ps.Publish(context.Background(), &pubsub.Message{Topic: m.Topic, Event: "pong", Payload: []byte(`{}`)})
	}
}

// A Deliver that publishes to its own history topic must neither deadlock
// nor break offset order: its broadcast is queued behind the one being
// delivered.
func TestHistoryDeliverMayPublishToItsTopic(t *testing.T) {
	ps := local.New()
	ps.SetHistoryPolicy(func(string) pubsub.HistoryOptions { return pubsub.HistoryOptions{Size: 10} })
	s := &echoSub{ps: ps, offsets: make(chan uint64, 10)}
	if err := ps.Subscribe("room:echo", s); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 3 {
			ps.Publish(context.Background(), &pubsub.Message{Topic: "room:echo", Event: "ping", Payload: []byte(`{}`)})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish from inside Deliver deadlocked")
	}
	for want := uint64(1); want <= 6; want++ {
		if got := <-s.offsets; got != want {
			t.Fatalf("offset %d delivered where %d was due", got, want)
		}
	}
}
