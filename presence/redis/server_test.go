package redis

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	pubsubredis "github.com/channelsd/channelsd/pubsub/redis"
	"github.com/channelsd/channelsd/test/redistest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := goleak.Find()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
				code = 1
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Exit(code)
}

// server is a redis-server process on a free loopback port.
type server = redistest.Server

func startRedis(t *testing.T) *server { return redistest.Start(t) }

func client(t *testing.T, s *server) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: s.Addr(), Protocol: 2, MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// testNode is one channelsd node: a Redis PubSub and a tracker over it.
type testNode struct {
	id string
	ps *pubsubredis.PubSub
	tr *Tracker
}

const (
	testHeartbeat = 100 * time.Millisecond
	testDeadAfter = 300 * time.Millisecond
	testCoalesce  = 20 * time.Millisecond
)

func newNode(t *testing.T, s *server, id string, tweak ...func(*Options)) *testNode {
	t.Helper()
	return newNodeWith(t, s, id, nil, tweak...)
}

// newNodeWith is newNode with psTweak applied to the PubSub's options.
func newNodeWith(t *testing.T, s *server, id string, psTweak func(*pubsubredis.Options), tweak ...func(*Options)) *testNode {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	psOpt := pubsubredis.Options{URL: s.URL(), NodeID: id, Prefix: "test", Logger: log}
	if psTweak != nil {
		psTweak(&psOpt)
	}
	ps, err := pubsubredis.New(ctx, psOpt)
	if err != nil {
		t.Fatalf("pubsub %s: %v", id, err)
	}
	opt := Options{
		Address: s.URL(), NodeID: id, Prefix: "test", PubSub: ps,
		Heartbeat: testHeartbeat, DeadAfter: testDeadAfter, Coalesce: testCoalesce, Logger: log,
	}
	for _, f := range tweak {
		f(&opt)
	}
	tr, err := New(ctx, opt)
	if err != nil {
		_ = ps.Close()
		t.Fatalf("tracker %s: %v", id, err)
	}
	n := &testNode{id: id, ps: ps, tr: tr}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close tracker %s: %v", id, err)
		}
		if err := ps.Close(); err != nil {
			t.Errorf("close pubsub %s: %v", id, err)
		}
	})
	return n
}
