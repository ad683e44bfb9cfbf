package local_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct {
	id  string
	mu  sync.Mutex
	got []string
}

func (r *recorder) SubscriberID() string { return r.id }
func (r *recorder) Deliver(m *pubsub.Message) {
	r.mu.Lock()
	r.got = append(r.got, m.Event)
	r.mu.Unlock()
}
func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func TestPublishReachesSubscribersInOrder(t *testing.T) {
	ps := local.New()
	a, b, other := &recorder{id: "a"}, &recorder{id: "b"}, &recorder{id: "o"}
	for _, s := range []*recorder{a, b} {
		if err := ps.Subscribe("room:1", s); err != nil {
			t.Fatal(err)
		}
	}
	if err := ps.Subscribe("room:2", other); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if err := ps.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*recorder{a, b} {
		got := r.events()
		if len(got) != 100 {
			t.Fatalf("%s got %d messages, want 100", r.id, len(got))
		}
		for i, e := range got {
			if e != fmt.Sprint(i) {
				t.Fatalf("%s: message %d is %q: out of order", r.id, i, e)
			}
		}
	}
	if n := len(other.events()); n != 0 {
		t.Fatalf("subscriber of another topic got %d messages", n)
	}
}

func TestBroadcastFromSkipsOnlyTheSender(t *testing.T) {
	ps := local.New()
	a, b := &recorder{id: "a"}, &recorder{id: "b"}
	_ = ps.Subscribe("t", a)
	_ = ps.Subscribe("t", b)
	_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "t", Event: "x", From: "a"})
	if len(a.events()) != 0 || len(b.events()) != 1 {
		t.Fatalf("a got %v, b got %v; want a none, b one", a.events(), b.events())
	}
}

func TestSubscribeIsIdempotentAndUnsubscribeStopsDelivery(t *testing.T) {
	ps := local.New()
	a := &recorder{id: "a"}
	_ = ps.Subscribe("t", a)
	_ = ps.Subscribe("t", a)
	if n := ps.Subscribers("t"); n != 1 {
		t.Fatalf("subscribers = %d after a double subscribe, want 1", n)
	}
	ps.Unsubscribe("t", a)
	ps.Unsubscribe("t", a)
	_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "t", Event: "x"})
	if len(a.events()) != 0 || ps.Subscribers("t") != 0 {
		t.Fatal("an unsubscribed subscriber still receives")
	}
}

func TestConcurrentSubscribePublish(t *testing.T) {
	ps := local.New()
	var wg sync.WaitGroup
	subs := make([]*recorder, 50)
	for i := range subs {
		subs[i] = &recorder{id: fmt.Sprint(i)}
	}
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				_ = ps.Subscribe("t", s)
				_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "t", Event: "x"})
				ps.Unsubscribe("t", s)
			}
		}()
	}
	wg.Wait()
	if n := ps.Subscribers("t"); n != 0 {
		t.Fatalf("%d subscribers left after all unsubscribed", n)
	}
}

func TestClosedRefuses(t *testing.T) {
	ps := local.New()
	_ = ps.Close()
	if err := ps.Publish(context.Background(), &pubsub.Message{Topic: "t"}); err != pubsub.ErrClosed {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := ps.Subscribe("t", &recorder{}); err != pubsub.ErrClosed {
		t.Fatalf("Subscribe after Close = %v, want ErrClosed", err)
	}
}

type countingEncoder struct{ n int }

func (c *countingEncoder) EncodeBroadcast(m *pubsub.Message) ([]byte, bool, error) {
	c.n++
	return []byte(m.Event), false, nil
}

func TestEncodedOncePerEncoder(t *testing.T) {
	m := &pubsub.Message{Event: "e"}
	e1, e2 := &countingEncoder{}, &countingEncoder{}
	for i := 0; i < 10; i++ {
		if d, _, _ := m.Encoded(e1); string(d) != "e" {
			t.Fatalf("encoding = %q", d)
		}
		m.Encoded(e2)
	}
	if e1.n != 1 || e2.n != 1 {
		t.Fatalf("encoders ran %d and %d times, want once each", e1.n, e2.n)
	}
}

// BenchmarkDispatch10k is one broadcast reaching 10,000 local subscribers
// through the shared encoding: the cost the fanout scenario multiplies.
func BenchmarkDispatch10k(b *testing.B) {
	ps := local.New()
	enc := &countingEncoder{}
	for i := 0; i < 10000; i++ {
		_ = ps.Subscribe("t", &encodingSub{id: fmt.Sprint(i), enc: enc})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "t", Event: "new_msg", Payload: []byte(`{"body":"hello"}`)})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/10000, "ns/delivery")
}

type encodingSub struct {
	id  string
	enc pubsub.Encoder
	n   int
}

func (s *encodingSub) SubscriberID() string { return s.id }
func (s *encodingSub) Deliver(m *pubsub.Message) {
	if d, _, _ := m.Encoded(s.enc); len(d) > 0 {
		s.n++
	}
}
