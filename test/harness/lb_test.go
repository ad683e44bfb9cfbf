package harness

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoadBalancerRoundRobin checks the load balancer fixture: two nodes
// and Redis behind HAProxy. Consecutive requests on one keep-alive client
// connection alternate between the nodes; a killed node leaves the
// rotation within a bounded time; started again (same container, same
// network alias, maybe another address) it comes back.
func TestLoadBalancerRoundRobin(t *testing.T) {
	c := Start(t, Options{Nodes: 2})
	lb := c.StartLoadBalancer(LBOptions{})

	// One client, keep-alive, at most one connection: dials counts the
	// TCP connections it opens to the load balancer.
	var dials atomic.Int32
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     time.Minute,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func() (int, string, error) {
		resp, err := client.Get(lb.HTTPURL() + "/healthz")
		if err != nil {
			return 0, "", err
		}
		_, _ = io.Copy(io.Discard, resp.Body) // read to the end, so the connection is reused
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get(ServedByHeader), nil
	}
	// alternating makes n requests and fails the test unless all are 200
	// and their servers alternate between the two nodes.
	alternating := func(n int) []string {
		t.Helper()
		var seq []string
		for range n {
			code, by, err := get()
			if err != nil || code != http.StatusOK {
				t.Fatalf("GET /healthz through the load balancer: %d, %v (served by %q)", code, err, by)
			}
			seq = append(seq, by)
		}
		for k, by := range seq {
			if by != "node1" && by != "node2" {
				t.Fatalf("%s = %q, want node1 or node2 (sequence %v)", ServedByHeader, by, seq)
			}
			if k > 0 && by == seq[k-1] {
				t.Fatalf("requests %d and %d both served by %s: not alternating (sequence %v)", k, k+1, by, seq)
			}
		}
		return seq
	}

	seq := alternating(10)
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d connections for 10 requests; want 1 keep-alive connection", n)
	}
	t.Logf("10 requests on one keep-alive connection: %s", strings.Join(seq, ","))

	// Node 2 killed: within a bounded time, every request is answered 200
	// by node 1 (10 in a row).
	c.Kill(2)
	killed := time.Now()
	deadline := killed.Add(15 * time.Second)
	var inRow, failed, fromNode2 int
	var last string
	for inRow < 10 {
		if time.Now().After(deadline) {
			st, _ := lb.ServerStatus(context.Background())
			t.Fatalf("requests not all served by node1 within 15s of killing node2 (last: %s; servers %v)", last, st)
		}
		code, by, err := get()
		switch {
		case err == nil && code == http.StatusOK && by == "node1":
			inRow++
			continue
		case err != nil:
			last = err.Error()
			failed++
		case code != http.StatusOK:
			last = "HTTP " + http.StatusText(code) + " from " + by
			failed++
		default:
			last = "HTTP 200 from " + by
			fromNode2++
		}
		inRow = 0
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	st, err := lb.ServerStatus(context.Background())
	t.Logf("node2 killed: out of the rotation after %v (%d failed requests, %d more answered by node2 meanwhile; servers %v, %v; %d connection(s) so far)",
		time.Since(killed).Round(time.Millisecond), failed, fromNode2, st, err, dials.Load())

	// Node 2 started again (same container and alias): back in the rotation.
	c.StartNode(2)
	started := time.Now()
	deadline = started.Add(15 * time.Second)
	for {
		if time.Now().After(deadline) {
			st, _ := lb.ServerStatus(context.Background())
			t.Fatalf("node2 not back in the rotation within 15s of its restart (servers %v)", st)
		}
		code, by, err := get()
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /healthz through the load balancer after node2's restart: %d, %v (served by %q)", code, err, by)
		}
		if by == "node2" {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	t.Logf("node2 back in the rotation %v after its restart", time.Since(started).Round(time.Millisecond))
	// HAProxy may take node2 back on its DNS answer alone, while a health
	// check begun when node2 was down is still in flight: that check then
	// fails and takes node2 out again for one check interval. Alternation
	// is checked once the checks themselves have kept node2 up for longer
	// than an interval (500 ms).
	var upSince time.Time
	for {
		if time.Now().After(deadline) {
			st, _ := lb.ServerStatus(context.Background())
			t.Fatalf("node2 not steadily up within 15s of its restart (servers %v)", st)
		}
		st, err := lb.ServerStatus(context.Background())
		if err != nil || st["node2"] != "UP" {
			upSince = time.Time{}
		} else if upSince.IsZero() {
			upSince = time.Now()
		} else if time.Since(upSince) > time.Second {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	seq = alternating(10)
	t.Logf("10 more requests: %s (%d connection(s) in all)", strings.Join(seq, ","), dials.Load())
}
