package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// The batch plan: sizes differ by at most one, never more batches than
// sockets, one batch per drainTick at most.
func TestDrainBatches(t *testing.T) {
	for _, c := range []struct {
		n      int
		window time.Duration
		want   int
	}{
		{0, 20 * time.Second, 0},
		{1, 20 * time.Second, 1},
		{3, 20 * time.Second, 3},
		{50, 2 * time.Second, 20},
		{10000, 20 * time.Second, 200},
		{10000, 0, 1},
		{7, 50 * time.Millisecond, 1},
	} {
		b := drainBatches(c.n, c.window)
		if b != c.want {
			t.Errorf("drainBatches(%d, %s) = %d, want %d", c.n, c.window, b, c.want)
			continue
		}
		sum, lo, hi := 0, c.n, 0
		for i := range b {
			size := c.n*(i+1)/b - c.n*i/b
			sum += size
			lo, hi = min(lo, size), max(hi, size)
		}
		if sum != c.n || (b > 0 && hi-lo > 1) {
			t.Errorf("n=%d window=%s: %d batches cover %d sockets, sizes %d..%d", c.n, c.window, b, sum, lo, hi)
		}
	}
}

// closeRecord is how one client saw its socket end.
type closeRecord struct {
	at time.Time
	st wsclient.CloseStatus
}

// dialMany opens n WebSocket clients to the started node and records
// their closes on the returned channel.
func dialMany(t *testing.T, n *Node, count int) <-chan closeRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	url := "ws://" + n.Addr().String() + "/socket/websocket"
	closes := make(chan closeRecord, count)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	for range count {
		c, err := wsclient.Dial(ctx, url, wsclient.Options{})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.AwaitClose(ctx)
			if err != nil {
				st.Err = err
			}
			closes <- closeRecord{time.Now(), st}
		}()
	}
	waitFor(t, "every socket open", func() bool { return n.Endpoint().SocketCount() == count })
	return closes
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// httpDo sends one request to the node and returns the status, headers
// and body.
func httpDo(t *testing.T, n *Node, method, path, key string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.Addr().String()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func decodeStatus(t *testing.T, body string) DrainStatus {
	t.Helper()
	var st DrainStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("drain status %q: %v", body, err)
	}
	return st
}

// A drain over a window closes the sockets in several batches spread over
// it, with 1012; from its start the node is not ready and refuses new
// sockets (WebSocket and long-poll) with 503 and Retry-After. The checks
// are on the shape of the closes, with generous bounds, not on timings
// that a loaded machine would miss.
func TestDrainSpreadsClosesOverWindow(t *testing.T) {
	const (
		count  = 50
		window = 2 * time.Second
	)
	n := newTestNode(t, Config{Addr: "127.0.0.1:0", DrainWindow: window, APIKey: "sesame"})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	closes := dialMany(t, n, count)

	if code, _, _ := httpDo(t, n, http.MethodGet, "/api/drain", ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /api/drain without the key: %d, want 401", code)
	}
	if code, _, _ := httpDo(t, n, http.MethodPost, "/api/drain", "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("POST /api/drain with a wrong key: %d, want 401", code)
	}
	if n.DrainStatus().Draining {
		t.Fatal("draining before any drain was asked for")
	}
	code, _, body := httpDo(t, n, http.MethodGet, "/api/drain", "sesame")
	if st := decodeStatus(t, body); code != http.StatusOK || st.Draining || st.StartedAt != nil || st.Window != "2s" {
		t.Fatalf("GET /api/drain before: %d %s", code, body)
	}

	began := time.Now()
	code, _, body = httpDo(t, n, http.MethodPost, "/api/drain", "sesame")
	st := decodeStatus(t, body)
	if code != http.StatusAccepted || !st.Draining || st.StartedAt == nil || st.Window != "2s" || st.SocketsLeft == 0 {
		t.Fatalf("POST /api/drain: %d %s", code, body)
	}

	// At once: not ready, new sockets refused.
	if code, _, _ := httpDo(t, n, http.MethodGet, "/readyz", ""); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %d, want 503", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
	var herr *wsclient.HandshakeError
	if !errors.As(err, &herr) || herr.Status != http.StatusServiceUnavailable || herr.Header.Get("Retry-After") == "" {
		t.Errorf("WebSocket dial while draining: %v (header %v), want 503 with Retry-After", err, herr)
	}
	code, hdr, _ := httpDo(t, n, http.MethodGet, "/socket/longpoll?vsn=2.0.0", "")
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("long-poll opening GET while draining: %d (Retry-After %q), want 503 with Retry-After", code, hdr.Get("Retry-After"))
	}
	// A second POST reports the same drain.
	code, _, body = httpDo(t, n, http.MethodPost, "/api/drain", "sesame")
	if st2 := decodeStatus(t, body); code != http.StatusAccepted || !st2.StartedAt.Equal(*st.StartedAt) {
		t.Errorf("second POST /api/drain: %d %s", code, body)
	}

	var recs []closeRecord
	for range count {
		select {
		case r := <-closes:
			recs = append(recs, r)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d sockets closed", len(recs), count)
		}
	}
	took := time.Since(began)
	var times []time.Time
	for _, r := range recs {
		if !r.st.Received || r.st.Code != channels.CloseServiceRestart {
			t.Errorf("a socket ended with %v, want close 1012", r.st)
		}
		times = append(times, r.at)
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	span := times[len(times)-1].Sub(times[0])
	// Groups: closes separated by a quiet gap of 30 ms or more. The plan
	// is 20 batches 100 ms apart.
	groups, most := 1, 0
	for i := range times {
		if i > 0 && times[i].Sub(times[i-1]) >= 30*time.Millisecond {
			groups++
		}
		within := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < 100*time.Millisecond; j++ {
			within++
		}
		most = max(most, within)
	}
	t.Logf("%d closes over %s (drain took %s): %d groups, at most %d within 100ms", count, span, took, groups, most)
	if span < window/2 {
		t.Errorf("closes spread over %s, want at least half the window (%s)", span, window/2)
	}
	if most > count/2 {
		t.Errorf("%d of %d sockets closed within 100ms: not spread", most, count)
	}
	if groups < 4 {
		t.Errorf("closes came in %d groups, want several batches", groups)
	}

	waitFor(t, "sockets_left 0", func() bool {
		_, _, body := httpDo(t, n, http.MethodGet, "/api/drain", "sesame")
		return decodeStatus(t, body).SocketsLeft == 0
	})
	if got := n.drainClosed.Load(); got != count {
		t.Errorf("drain closed %d sockets, want %d", got, count)
	}
	// Already drained: Shutdown has nothing left to wait for.
	start := time.Now()
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown after the drain took %s", d)
	}
}

// Shutdown with no drain window closes every socket at once, with 1012,
// as the shutdown did before drain windows; with a window it drains
// first, then stops.
func TestShutdownDrains(t *testing.T) {
	for _, window := range []time.Duration{0, 500 * time.Millisecond} {
		t.Run(window.String(), func(t *testing.T) {
			n := newTestNode(t, Config{Addr: "127.0.0.1:0", DrainWindow: window})
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
			const count = 10
			closes := dialMany(t, n, count)
			start := time.Now()
			if err := n.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			if took < window*9/10/2 || took > window+5*time.Second {
				t.Errorf("Shutdown took %s with a %s window", took, window)
			}
			var times []time.Time
			for range count {
				r := <-closes
				if !r.st.Received || r.st.Code != channels.CloseServiceRestart {
					t.Errorf("a socket ended with %v, want close 1012", r.st)
				}
				times = append(times, r.at)
			}
			if n.Endpoint().SocketCount() != 0 {
				t.Errorf("%d sockets left after Shutdown", n.Endpoint().SocketCount())
			}
			if n.drainClosed.Load() != count {
				t.Errorf("drain closed %d, want %d", n.drainClosed.Load(), count)
			}
			slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
			if span := times[count-1].Sub(times[0]); window > 0 && span < window/2 {
				t.Errorf("with a %s window the closes spread over %s only", window, span)
			}
		})
	}
}

// A Shutdown whose context ends during the window closes the remaining
// sockets at once instead of waiting for their batch.
func TestShutdownHurriesDrain(t *testing.T) {
	n := newTestNode(t, Config{Addr: "127.0.0.1:0", DrainWindow: time.Hour})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	closes := dialMany(t, n, 5)
	n.Drain()
	// The first batch goes at once; the next in 12 minutes.
	if r := <-closes; r.st.Code != channels.CloseServiceRestart {
		t.Fatalf("first close %v", r.st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = n.Shutdown(ctx) // may report the deadline
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Shutdown took %s", d)
	}
	for range 4 {
		select {
		case r := <-closes:
			if r.st.Code != channels.CloseServiceRestart {
				t.Errorf("close %v, want 1012", r.st)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a socket was not closed by the hurried drain")
		}
	}
}

// /metrics shows the drain.
func TestDrainMetrics(t *testing.T) {
	n := newTestNode(t, Config{Addr: "127.0.0.1:0"})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	closes := dialMany(t, n, 3)
	n.Drain()
	for range 3 {
		<-closes
	}
	_, _, body := httpDo(t, n, http.MethodGet, "/metrics", "")
	for _, want := range []string{"channelsd_draining 1", "channelsd_drain_sockets_closed_total 3"} {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
