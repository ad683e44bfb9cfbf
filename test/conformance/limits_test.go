package conformance

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Limits (README "Limits"): each refusal happens at its bound and not
// before, the client sees the documented reply or close, and
// channelsd_limit_hits_total{limit=...} counts it.

// limitHits scrapes the node's /metrics for one limit's counter.
func (tn *testNode) limitHits(t *testing.T, limit string) int {
	t.Helper()
	res, err := tn.api.Get(tn.httpURL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	prefix := `channelsd_limit_hits_total{limit="` + limit + `"} `
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			return int(n)
		}
	}
	t.Fatalf("no %s in /metrics", prefix)
	return 0
}

// expectHits waits a little for a counter (closes are counted as they
// happen, which may trail the client's view).
func (tn *testNode) expectHits(t *testing.T, limit string, want int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := tn.limitHits(t, limit)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("channelsd_limit_hits_total{limit=%q} = %d, want %d", limit, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// upgrade sends a WebSocket handshake as a plain HTTP request and returns
// the answer's status, Retry-After and body.
func (tn *testNode) upgrade(t *testing.T) (int, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, tn.httpURL+"/socket/websocket?vsn=2.0.0", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	res, err := tn.api.Do(req)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header.Get("Retry-After"), string(body)
}

func (tn *testNode) longPollOpen(t *testing.T) (int, string) {
	t.Helper()
	res, err := tn.api.Get(tn.httpURL + "/socket/longpoll?vsn=2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode, res.Header.Get("Retry-After")
}

func TestLimitMessageSizes(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) {
		c.MaxTopicLength = 20 // "conformance:" and 8 more
		c.MaxEventLength = 4  // "ping"
		c.MaxPayloadSize = 100
	})
	for _, v := range bothVersions {
		c := tn.dial(t, v)
		atBound := "conformance:12345678"
		c.join(atBound, `{}`)
		over := atBound + "9"
		c.send("7", "7", over, "phx_join", `{}`)
		c.expectFrame("7", "7", over, "phx_reply", reply("error", `{"reason":"topic too long"}`))
		c.send("8", "8", over, "ping", `{}`)
		c.expectFrame("8", "8", over, "phx_reply", reply("error", `{"reason":"topic too long"}`))

		c.call(atBound, "ping", `{}`, "ok", `{}`)
		c.send(c.JoinRef(atBound), "9", atBound, "pingx", `{}`)
		c.expectFrame(c.JoinRef(atBound), "9", atBound, "phx_reply", reply("error", `{"reason":"event too long"}`))

		pad := func(n int) string { return `{"p":"` + strings.Repeat("x", n-8) + `"}` }
		if len(pad(100)) != 100 {
			t.Fatal(len(pad(100)))
		}
		c.call(atBound, "ping", pad(100), "ok", pad(100))
		c.send(c.JoinRef(atBound), "10", atBound, "ping", pad(101))
		c.expectFrame(c.JoinRef(atBound), "10", atBound, "phx_reply", reply("error", `{"reason":"payload too large"}`))
		// Without a ref: dropped, no answer; the socket carries on.
		c.send(c.JoinRef(atBound), nil, atBound, "ping", pad(101))
		c.call(atBound, "ping", `{}`, "ok", `{}`)
	}
	tn.expectHits(t, "topic_length", 4)
	tn.expectHits(t, "event_length", 2)
	tn.expectHits(t, "payload_size", 4)
}

func TestLimitMaxChannels(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) { c.MaxChannels = 2 })
	c := tn.dial(t, v2)
	c.join("conformance:a", `{}`)
	c.join("conformance:b", `{}`)
	c.send("3", "3", "conformance:c", "phx_join", `{}`)
	c.expectFrame("3", "3", "conformance:c", "phx_reply", reply("error", `{"reason":"too many channels joined"}`))
	tn.expectHits(t, "channels", 1)
}

// The token bucket: Burst at once, then the rate; over it, an error reply
// for a message with a ref, nothing for one without; heartbeats answered
// all the same.
func TestLimitRate(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) {
		c.MaxMessagesPerSecond = 10
		c.Burst = 5
	})
	c := tn.dial(t, v2)
	c.join(lobby, `{}`)
	time.Sleep(600 * time.Millisecond) // the bucket is full again: 5
	j := c.JoinRef(lobby)
	var batch []byte
	for i := 1; i <= 6; i++ {
		batch = c.v.frame(j, strconv.Itoa(100+i), lobby, "ping", fmt.Sprintf(`{"i":%d}`, i))
		c.sendRaw(batch, false)
	}
	for i := 1; i <= 5; i++ {
		c.expectFrame(j, strconv.Itoa(100+i), lobby, "phx_reply", reply("ok", fmt.Sprintf(`{"i":%d}`, i)))
	}
	c.expectFrame(j, "106", lobby, "phx_reply", reply("error", `{"reason":"rate limited"}`))
	// Over the rate, a heartbeat is still answered.
	c.send(nil, "107", "phoenix", "heartbeat", `{}`)
	c.expectFrame(nil, "107", "phoenix", "phx_reply", reply("ok", `{}`))
	// A message without a ref: dropped silently.
	c.send(j, nil, lobby, "ping", `{}`)
	c.quiet()
	time.Sleep(250 * time.Millisecond) // two tokens
	c.call(lobby, "ping", `{"again":1}`, "ok", `{"again":1}`)
	tn.expectHits(t, "messages_per_second", 2)
	tn.expectHits(t, "rate_abuse", 0)
}

// A socket that stays over its rate is closed with 1008 "rate limited"
// after RateAbuseAfter; one that bursts over it now and then, letting its
// bucket fill up in between, is not.
func TestLimitRateAbuse(t *testing.T) {
	t.Parallel()
	const abuseAfter = 500 * time.Millisecond
	tn := startNode(t, func(c *node.Config) {
		c.MaxMessagesPerSecond = 20
		c.Burst = 4
		c.RateAbuseAfter = abuseAfter
	})

	bursty := tn.dial(t, v2)
	bursty.join(lobby, `{}`)
	for round := 0; round < 3; round++ {
		time.Sleep(300 * time.Millisecond) // full bucket: 4
		for i := 0; i < 6; i++ {
			bursty.send(bursty.JoinRef(lobby), nil, lobby, "ping", `{}`)
		}
		time.Sleep(abuseAfter / 2)
	}
	bursty.call(lobby, "ping", `{}`, "ok", `{}`)
	if n := tn.limitHits(t, "rate_abuse"); n != 0 {
		t.Fatalf("bursty client closed for abuse (%d)", n)
	}

	abuser := tn.dial(t, v2)
	abuser.join(lobby, `{}`)
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond): // 200/s, ten times the rate
			}
			if abuser.SendRaw(abuser.v.frame(nil, nil, lobby, "ping", `{}`), false) != nil {
				return
			}
		}
	}()
	cs := abuser.awaitClose()
	close(stop)
	wg.Wait()
	took := time.Since(start)
	if cs.Code != 1008 || cs.Reason != "rate limited" {
		t.Fatalf("abuser closed with %d %q, want 1008 \"rate limited\"", cs.Code, cs.Reason)
	}
	if took < abuseAfter {
		t.Fatalf("abuser closed after %s, before the abuse window %s", took, abuseAfter)
	}
	tn.expectHits(t, "rate_abuse", 1)
	bursty.call(lobby, "ping", `{}`, "ok", `{}`)
}

// Sockets of both transports count toward MaxSockets; beyond it, HTTP 503
// with Retry-After; a socket that ends frees its slot.
func TestLimitMaxSockets(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) { c.MaxSockets = 2 })
	a := tn.dial(t, v2)
	if st, _ := tn.longPollOpen(t); st != http.StatusOK {
		t.Fatalf("long-poll open within the limit: HTTP %d", st)
	}
	status, retry, body := tn.upgrade(t)
	if status != http.StatusServiceUnavailable || retry == "" || body != "too many sockets" {
		t.Fatalf("upgrade beyond the limit: %d, Retry-After %q, body %q", status, retry, body)
	}
	if st, retry := tn.longPollOpen(t); st != http.StatusServiceUnavailable || retry == "" {
		t.Fatalf("long-poll open beyond the limit: HTTP %d, Retry-After %q", st, retry)
	}
	_, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{Vsn: v2.vsn})
	var herr *wsclient.HandshakeError
	if !errors.As(err, &herr) || herr.Status != http.StatusServiceUnavailable {
		t.Fatalf("dial beyond the limit: %v", err)
	}
	tn.expectHits(t, "sockets", 3)

	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for tn.WebSocketStats().Open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the closed socket did not end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b := tn.dial(t, v2)
	b.join(lobby, `{}`)
	tn.expectHits(t, "sockets", 3)
}

func TestLimitLongPollSessions(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) { c.LongPollMaxSessions = 1 })
	if st, _ := tn.longPollOpen(t); st != http.StatusOK {
		t.Fatalf("first session: HTTP %d", st)
	}
	if st, retry := tn.longPollOpen(t); st != http.StatusServiceUnavailable || retry == "" {
		t.Fatalf("second session: HTTP %d, Retry-After %q", st, retry)
	}
	tn.dial(t, v2).join(lobby, `{}`) // WebSocket is not bound by it
	tn.expectHits(t, "longpoll_sessions", 1)
	tn.expectHits(t, "sockets", 0)
}

// blockingConnect holds connect callbacks until released.
type blockingConnect struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingConnect) Connect(ctx context.Context, _ *channels.ConnectInfo) (channels.Identity, error) {
	b.entered <- struct{}{}
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return channels.Identity{}, nil
}

func TestLimitPendingUpgrades(t *testing.T) {
	t.Parallel()
	bc := &blockingConnect{entered: make(chan struct{}, 4), release: make(chan struct{})}
	tn := startNode(t, withSocketHandler(bc), func(c *node.Config) { c.MaxPendingUpgrades = 2 })
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{Vsn: v2.vsn})
			if err == nil {
				c.Close()
			}
			errs <- err
		}()
	}
	for i := 0; i < 2; i++ {
		<-bc.entered
	}
	status, retry, body := tn.upgrade(t)
	if status != http.StatusServiceUnavailable || retry == "" || body != "too many pending upgrades" {
		t.Fatalf("third handshake: %d, Retry-After %q, body %q", status, retry, body)
	}
	close(bc.release)
	wg.Wait()
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("pending handshake within the limit: %v", err)
		}
	}
	tn.expectHits(t, "pending_upgrades", 1)
	tn.dial(t, v2) // room again
}

// A client that trickles its request headers is cut at HandshakeTimeout.
func TestLimitHandshakeTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 400 * time.Millisecond
	tn := startNode(t, func(c *node.Config) { c.HandshakeTimeout = timeout })
	nc, err := net.Dial("tcp", strings.TrimPrefix(tn.httpURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	start := time.Now()
	head := "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: "
	if _, err := io.WriteString(nc, head); err != nil {
		t.Fatal(err)
	}
	closed := make(chan time.Duration, 1)
	go func() {
		_, _ = io.Copy(io.Discard, bufio.NewReader(nc))
		closed <- time.Since(start)
	}()
	// One byte every 20 ms, a header that never ends.
	var took time.Duration
trickle:
	for {
		select {
		case took = <-closed:
			break trickle
		case <-time.After(20 * time.Millisecond):
			_, _ = nc.Write([]byte("x"))
			if time.Since(start) > 10*timeout {
				t.Fatal("trickling client still connected after 10 handshake timeouts")
			}
		}
	}
	if took < timeout-50*time.Millisecond || took > timeout+time.Second {
		t.Fatalf("trickling client cut after %s, want about %s", took, timeout)
	}
	tn.expectHits(t, "handshake_timeout", 1)
	// A prompt client is not affected.
	tn.dial(t, v2).join(lobby, `{}`)
}
