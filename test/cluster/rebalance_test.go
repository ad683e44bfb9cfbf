package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Scale-up with rebalancing on: two nodes behind the round-robin load
// balancer hold 1,000 clients (reconnecting and rejoining as phoenix.js
// does); a third node is added. The nodes above (1+threshold) x the mean
// ask a share of their oldest sockets to reconnect (close 1012) until
// every node is within the threshold. Every client ends up connected and
// joined, and none is asked to move more than once.
func TestRebalanceAfterScaleUp(t *testing.T) {
	const (
		clients   = 1000
		threshold = 0.2
	)
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info", Args: []string{
		"--rebalance-threshold=" + strconv.FormatFloat(threshold, 'f', -1, 64),
		"--rebalance-share=0.1",
		"--report-interval=500ms",
	}})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	// The replica to add later: down before any client arrives.
	cl.Stop(3, 10*time.Second)
	lb.AwaitServer(3, "DOWN", 15*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rcs := make([]*wsclient.Reconnecting, clients)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	sem := make(chan struct{}, 50)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			user := "u" + strconv.Itoa(i)
			rc, err := wsclient.DialReconnecting(ctx, lb.WSURL(), wsclient.ReconnectOptions{
				Options: wsclient.Options{Params: map[string]string{"user": user}, Buffer: 64},
			}, "room:rb-"+strconv.Itoa(i%10), map[string]string{"user": user})
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			rcs[i] = rc
		}()
	}
	wg.Wait()
	close(errs)
	defer func() {
		for _, rc := range rcs {
			if rc != nil {
				_ = rc.Close()
			}
		}
	}()
	for err := range errs {
		t.Fatal(err)
	}
	before := socketsPerNode(ctx, t, cl, 1, 2)
	t.Logf("before the scale-up: %v", before)
	if before[1]+before[2] != clients || before[1] == 0 || before[2] == 0 {
		t.Fatalf("sockets before the scale-up: %v, want %d over node1 and node2", before, clients)
	}

	began := time.Now()
	cl.StartNode(3)
	mean := float64(clients) / 3
	var last map[int]int
	stable := 0
	for stable < 6 {
		if ctx.Err() != nil {
			t.Fatalf("the spread never settled within the threshold: last %v", last)
		}
		last = socketsPerNode(ctx, t, cl, 1, 2, 3)
		within := last[1]+last[2]+last[3] == clients
		for i := 1; i <= 3; i++ {
			within = within && float64(last[i]) <= mean*(1+threshold)
		}
		if within {
			stable++
		} else {
			stable = 0
		}
		time.Sleep(500 * time.Millisecond) // sampling the nodes' gauges once per report interval
	}
	t.Logf("settled in %v: %v (mean %.0f, threshold %.0f%%)", time.Since(began).Round(100*time.Millisecond), last, mean, threshold*100)

	moved, maxMoves := 0, 0
	for i, rc := range rcs {
		n := 0
		for _, c := range rc.Conns() {
			if c.Status.Received && c.Status.Code == channels.CloseServiceRestart {
				n++
			}
		}
		if n > 0 {
			moved++
		}
		maxMoves = max(maxMoves, n)
		if n > 1 {
			t.Errorf("client %d was asked to move %d times: %+v", i, n, rc.Conns())
		}
		if !rc.Connected() {
			t.Errorf("client %d is not connected", i)
		}
	}
	t.Logf("%d of %d clients moved, at most %d times each", moved, clients, maxMoves)
	if moved == 0 {
		t.Fatal("no client moved, yet the spread changed")
	}
}

// socketsPerNode reads channelsd_sockets{transport="websocket"} from each
// node's /metrics.
func socketsPerNode(ctx context.Context, t testing.TB, cl *harness.Cluster, nodes ...int) map[int]int {
	t.Helper()
	out := make(map[int]int, len(nodes))
	for _, i := range nodes {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, cl.Node(i).HTTPURL()+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("metrics of node%d: %v", i, err)
		}
		sc := bufio.NewScanner(res.Body)
		found := false
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), `channelsd_sockets{transport="websocket"} `); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("metrics of node%d: %q", i, sc.Text())
				}
				out[i], found = int(f), true
			}
		}
		res.Body.Close()
		if !found {
			t.Fatalf("metrics of node%d: no channelsd_sockets for websocket", i)
		}
	}
	return out
}
