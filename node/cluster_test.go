package node

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// sharedPubSub is one in-process PubSub for several nodes: the first
// node to shut down must not close it under the others.
type sharedPubSub struct{ *local.PubSub }

func (sharedPubSub) Close() error { return nil }

func newShared() sharedPubSub { return sharedPubSub{local.New()} }

// startListening starts a node on 127.0.0.1 with a short report interval.
// Nodes given the same PubSub form one cluster in this process.
func startListening(t *testing.T, cfg Config) *Node {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	if cfg.ReportInterval == 0 {
		cfg.ReportInterval = 50 * time.Millisecond
	}
	if cfg.Router == nil {
		cfg.Router = &channels.Router{}
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown(context.Background()) })
	return n
}

func wsURL(n *Node) string { return "ws://" + n.Addr().String() + "/socket/websocket?vsn=2.0.0" }

func dial(t *testing.T, n *Node) *wsclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsclient.Dial(ctx, wsURL(n), wsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// awaitView waits until node n's view satisfies ok.
func awaitView(t *testing.T, n *Node, what string, ok func([]NodeReport) bool) []NodeReport {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := n.cluster.live(time.Now())
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: view never satisfied: %+v", what, v)
		}
		time.Sleep(10 * time.Millisecond) // polling a view that changes every interval
	}
}

func TestClusterViewListsEveryNodeWithItsSockets(t *testing.T) {
	ps := newShared()
	a := startListening(t, Config{NodeID: "a", PubSub: ps})
	b := startListening(t, Config{NodeID: "b", PubSub: ps})
	for range 3 {
		dial(t, a)
	}
	dial(t, b)
	for _, n := range []*Node{a, b} {
		awaitView(t, n, n.cfg.NodeID+" sees a:3 b:1", func(v []NodeReport) bool {
			return len(v) == 2 && v[0].Node == "a" && v[0].Sockets == 3 && v[0].WebSockets == 3 &&
				v[1].Node == "b" && v[1].Sockets == 1
		})
	}
	// A node that stops reporting leaves the view after three intervals.
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	awaitView(t, a, "b gone", func(v []NodeReport) bool { return len(v) == 1 && v[0].Node == "a" })
}

// Rebalancing: node a holds every socket, b none; each socket asked to
// move reconnects to b, as a load balancer would send it. a stops within
// the threshold, and no client is asked to move twice.
func TestRebalanceMovesSocketsUntilWithinThreshold(t *testing.T) {
	ps := newShared()
	reb := RebalanceConfig{Threshold: 0.2, Share: 0.1}
	a := startListening(t, Config{NodeID: "a", PubSub: ps, Rebalance: reb})
	b := startListening(t, Config{NodeID: "b", PubSub: ps, Rebalance: reb})

	const clients = 40
	var mu sync.Mutex
	moves := make([]int, clients)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range clients {
		c := dial(t, a)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-c.Done():
				case <-stop:
					return
				}
				st := c.Status()
				if !st.Received || st.Code != channels.CloseServiceRestart {
					return
				}
				mu.Lock()
				moves[i]++
				mu.Unlock()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				nc, err := wsclient.Dial(ctx, wsURL(b), wsclient.Options{})
				cancel()
				if err != nil {
					return
				}
				c = nc
				defer c.Close()
			}
		}()
	}
	// Wait until a is within the threshold and stays there for several
	// rounds (a view that no longer changes).
	var last []NodeReport
	stable := 0
	deadline := time.Now().Add(20 * time.Second)
	for stable < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("never settled: %+v", last)
		}
		v := awaitView(t, a, "two nodes", func(v []NodeReport) bool { return len(v) == 2 })
		if last != nil && v[0].Sockets == last[0].Sockets && v[1].Sockets == last[1].Sockets && v[0].Sockets+v[1].Sockets == clients {
			stable++
		} else {
			stable = 0
		}
		last = v
		time.Sleep(a.cfg.ReportInterval)
	}
	close(stop)
	wg.Wait()
	sa, sb := last[0].Sockets, last[1].Sockets
	mean := float64(clients) / 2
	if float64(sa) > mean*1.2 || sb == 0 {
		t.Fatalf("settled at a=%d b=%d: a should be within 20%% of the mean %.0f", sa, sb, mean)
	}
	if sa < sb-int64(clients/10) {
		t.Fatalf("settled at a=%d b=%d: moved far more than needed", sa, sb)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, m := range moves {
		if m > 1 {
			t.Fatalf("client %d asked to move %d times", i, m)
		}
	}
	if got := a.rebalanced.Load(); got != uint64(sb) {
		t.Fatalf("a counted %d moves, b holds %d", got, sb)
	}
}

var _ pubsub.Subscriber = (*clusterView)(nil)
