package redis

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/test/redistest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := findLeaks(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks is goleak.Find with a longer patience than goleak's fixed
// half second: a go-redis pool that failed to dial probes in the
// background once a second, and ends only at its next probe after Close.
func findLeaks(opts ...goleak.Option) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func verifyNoLeaks(t testing.TB, opts ...goleak.Option) {
	t.Helper()
	if err := findLeaks(opts...); err != nil {
		t.Fatal(err)
	}
}

// redisServer is a real redis-server process on a loopback port, which
// the tests stop and start again on the same port.
type redisServer = redistest.Server

func startRedis(t testing.TB) *redisServer { return redistest.Start(t) }

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// node starts a PubSub on srv, closed when the test ends.
func node(t testing.TB, srv *redisServer, id string, tweak ...func(*Options)) *PubSub {
	t.Helper()
	opt := Options{
		URL:                 srv.URL(),
		NodeID:              id,
		Prefix:              "test",
		PublishTimeout:      time.Second,
		HealthCheckInterval: 200 * time.Millisecond,
		Logger:              slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range tweak {
		f(&opt)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := New(ctx, opt)
	if err != nil {
		t.Fatalf("New(%s): %v", id, err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close(%s): %v", id, err)
		}
	})
	return p
}

// testWriter sends log lines to t.Log, so they show with the failing test.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// inspector is a plain client for looking at Redis from outside.
func inspector(t testing.TB, srv *redisServer) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Protocol: 2, MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// channels returns the Redis channels under prefix that have subscribers.
func channels(t testing.TB, c *goredis.Client, prefix string) []string {
	t.Helper()
	got, err := c.PubSubChannels(context.Background(), prefix+":t:*").Result()
	if err != nil {
		t.Fatalf("PUBSUB CHANNELS: %v", err)
	}
	slices.Sort(got)
	return got
}

func numsub(t testing.TB, c *goredis.Client, channel string) int64 {
	t.Helper()
	got, err := c.PubSubNumSub(context.Background(), channel).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return got[channel]
}

func syncAll(t testing.TB, nodes ...*PubSub) {
	t.Helper()
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := n.Sync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Sync(%s): %v", n.NodeID(), err)
		}
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// recorder is a Subscriber that keeps what it is given.
type recorder struct {
	id   string
	mu   sync.Mutex
	msgs []*pubsub.Message
}

func (r *recorder) SubscriberID() string { return r.id }

func (r *recorder) Deliver(m *pubsub.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.msgs))
	for i, m := range r.msgs {
		out[i] = m.Event
	}
	return out
}

func (r *recorder) messages() []*pubsub.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

func (r *recorder) waitCount(t testing.TB, n int) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s to receive %d messages", r.id, n), func() bool { return r.count() >= n })
}

func publish(t testing.TB, p *PubSub, topic, event string) {
	t.Helper()
	err := p.Publish(context.Background(), &pubsub.Message{Topic: topic, Event: event, Payload: []byte(`{}`)})
	if err != nil {
		t.Fatalf("Publish(%s, %s) on %s: %v", topic, event, p.NodeID(), err)
	}
}
