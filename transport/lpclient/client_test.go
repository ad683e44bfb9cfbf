package lpclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/cmd/channelsd/app"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/test/nodetest"
	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// These tests run against an in-process node serving the default
// application (package app imports the node's packages, hence the
// external test package). Every client is closed and every node shut down
// in t.Cleanup, so nothing may be left running at the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 20 * time.Second

type testNode struct {
	*node.Node
	lpURL   string
	httpURL string
}

func startNode(t *testing.T, opts ...func(*node.Config)) *testNode {
	t.Helper()
	n := nodetest.Start(t, opts...)
	addr := n.Addr().String()
	return &testNode{Node: n, lpURL: "http://" + addr + "/socket/longpoll", httpURL: "http://" + addr}
}

// post calls the node's HTTP API.
func (tn *testNode) post(t *testing.T, path, body string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: testTimeout}).Post(tn.httpURL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST %s: HTTP %d", path, resp.StatusCode)
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func open(t *testing.T, url string, opts lpclient.Options) *lpclient.Client {
	t.Helper()
	c, err := lpclient.Open(ctxFor(t), url, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func join(t *testing.T, c *lpclient.Client, topic string, params any) {
	t.Helper()
	r, err := c.Join(ctxFor(t), topic, params)
	if err != nil {
		t.Fatalf("join %s: %v", topic, err)
	}
	if r.Status != "ok" {
		t.Fatalf("join %s: %s", topic, r)
	}
}

type chat struct {
	Body string `json:"body"`
	User string `json:"user"`
}

func chatOf(t *testing.T, m wsclient.Message) chat {
	t.Helper()
	var c chat
	if err := json.Unmarshal(m.Payload, &c); err != nil {
		t.Fatalf("payload of %s: %v", m, err)
	}
	return c
}

func TestJoinPushBroadcast(t *testing.T) {
	tn := startNode(t)
	ann := open(t, tn.lpURL, lpclient.Options{Params: map[string]string{"user": "ann"}})
	if ann.Token() == "" {
		t.Fatal("no token after Open")
	}
	join(t, ann, "room:a", nil)
	if _, err := ann.Await(ctxFor(t), wsclient.IsEvent("room:a", "presence_state")); err != nil {
		t.Fatalf("presence_state: %v", err)
	}

	// A WebSocket in the same room sees the long-poll client's messages
	// and the other way round.
	ws, err := wsclient.Dial(ctxFor(t), "ws://"+tn.Addr().String()+"/socket/websocket", wsclient.Options{Params: map[string]string{"user": "bob"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.Close() })
	if r, err := ws.Join(ctxFor(t), "room:a", nil); err != nil || r.Status != "ok" {
		t.Fatalf("ws join: %v %v", r, err)
	}

	ref, err := ann.Push("room:a", "new_msg", map[string]string{"body": "from ann"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ann.AwaitReply(ctxFor(t), ref); err != nil || r.Status != "ok" {
		t.Fatalf("reply to new_msg: %v %v", r, err)
	}
	for who, await := range map[string]func(context.Context, func(wsclient.Message) bool) (wsclient.Message, error){"ann": ann.Await, "bob": ws.Await} {
		m, err := await(ctxFor(t), wsclient.IsEvent("room:a", "new_msg"))
		if err != nil {
			t.Fatalf("%s: new_msg: %v", who, err)
		}
		if got := chatOf(t, m); got != (chat{"from ann", "ann"}) {
			t.Errorf("%s got %+v", who, got)
		}
	}
	if _, err := ws.Push("room:a", "new_msg", map[string]string{"body": "from bob"}); err != nil {
		t.Fatal(err)
	}
	m, err := ann.Await(ctxFor(t), wsclient.IsEvent("room:a", "new_msg"))
	if err != nil {
		t.Fatalf("ann: bob's new_msg: %v", err)
	}
	if got := chatOf(t, m); got != (chat{"from bob", "bob"}) {
		t.Errorf("ann got %+v", got)
	}
	// And the HTTP API's broadcasts.
	tn.post(t, "/api/broadcast", `{"topic":"room:a","event":"news","payload":{"n":1}}`)
	if m, err := ann.Await(ctxFor(t), wsclient.IsEvent("room:a", "news")); err != nil || string(m.Payload) != `{"n":1}` {
		t.Fatalf("news: %v %v", m, err)
	}
	if ann.Reconnects() != 0 || len(ann.Losses()) != 0 {
		t.Errorf("reconnects %d, losses %v", ann.Reconnects(), ann.Losses())
	}
	for i, s := range ann.ServedBy() {
		if s != "" {
			t.Errorf("ServedBy[%d] = %q without a load balancer", i, s)
		}
	}
	reqs := ann.Requests()
	if len(reqs) < 3 || !reqs[0].Open || reqs[0].Status != 410 || reqs[0].Method != http.MethodGet {
		t.Errorf("requests %+v: want the opening GET answered 410 first", reqs)
	}
}

// gate is an http.RoundTripper that holds POSTs while closed, records
// every POST body and sets X-Served-By to alternating names.
type gate struct {
	next http.RoundTripper

	mu     sync.Mutex
	hold   chan struct{} // nil: open
	held   chan struct{} // receives when a POST is held
	bodies []string
	ctypes []string
	n      int
}

func (g *gate) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost {
		body, _ := io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(strings.NewReader(string(body)))
		g.mu.Lock()
		g.bodies = append(g.bodies, string(body))
		g.ctypes = append(g.ctypes, req.Header.Get("Content-Type"))
		hold, held := g.hold, g.held
		g.mu.Unlock()
		if hold != nil {
			held <- struct{}{}
			<-hold
		}
	}
	resp, err := g.next.RoundTrip(req)
	if err == nil {
		g.mu.Lock()
		g.n++
		resp.Header.Set(lpclient.ServedByHeader, fmt.Sprintf("n%d", g.n%2+1))
		g.mu.Unlock()
	}
	return resp, err
}

func TestBatching(t *testing.T) {
	// 203 pushes in one go: above the default rate limit (README "Limits").
	tn := startNode(t, func(c *node.Config) { c.MaxMessagesPerSecond = -1 })
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	g := &gate{next: tr}
	c := open(t, tn.lpURL, lpclient.Options{HTTPClient: &http.Client{Transport: g}})
	join(t, c, "room:b", map[string]string{"user": "ann"})

	// Hold the first POST; the 249 sends made meanwhile go in the next
	// POSTs, 100 lines at most each.
	g.mu.Lock()
	g.hold, g.held = make(chan struct{}), make(chan struct{}, 1)
	hold := g.hold
	g.mu.Unlock()
	const n = 250
	refs := make([]string, 0, n)
	push := func(i int) {
		ref, err := c.Push("room:b", "ping", map[string]int{"i": i})
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, ref)
	}
	push(1)
	select {
	case <-g.held:
	case <-time.After(testTimeout):
		t.Fatal("the first POST never came")
	}
	for i := 2; i <= n; i++ {
		push(i)
	}
	g.mu.Lock()
	g.hold = nil
	g.mu.Unlock()
	close(hold)
	if err := c.Flush(ctxFor(t)); err != nil {
		t.Fatal(err)
	}
	for i, ref := range refs {
		r, err := c.AwaitReply(ctxFor(t), ref)
		if err != nil {
			t.Fatalf("reply %d: %v", i+1, err)
		}
		var p struct{ I int }
		if err := json.Unmarshal(r.Payload, &p); err != nil || r.Status != "ok" || p.I != i+1 {
			t.Fatalf("reply %d: %s", i+1, r)
		}
	}

	g.mu.Lock()
	bodies, ctypes := g.bodies, g.ctypes
	g.mu.Unlock()
	var lines []int
	for i, b := range bodies {
		if ctypes[i] != "application/x-ndjson" {
			t.Errorf("POST %d: Content-Type %q", i, ctypes[i])
		}
		if strings.HasSuffix(b, "\n") {
			t.Errorf("POST %d ends with a newline", i)
		}
		lines = append(lines, strings.Count(b, "\n")+1)
	}
	if want := []int{1, 1, 100, 100, 49}; fmt.Sprint(lines) != fmt.Sprint(want) {
		t.Errorf("lines per POST %v, want %v", lines, want)
	}
	st := c.Stats()
	if st.Posts != 5 || st.Lines != n+1 || st.MaxBatch != 100 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
	var posts []int
	for _, r := range c.Requests() {
		if r.Method == http.MethodPost {
			posts = append(posts, r.Lines)
		}
	}
	if fmt.Sprint(posts) != fmt.Sprint(lines) {
		t.Errorf("Requests report POSTs of %v lines, the server got %v", posts, lines)
	}
	// Every answered request carries the header (the poll in flight has
	// none yet).
	reqs, sb := c.Requests(), c.ServedBy()
	if len(sb) != len(reqs) || len(sb) < 6 {
		t.Fatalf("ServedBy %v", sb)
	}
	for i, s := range sb {
		if !reqs[i].End.IsZero() && s != "n1" && s != "n2" {
			t.Errorf("ServedBy[%d] = %q", i, s)
		}
	}
}

func TestReconnectAfterDisconnect(t *testing.T) {
	tn := startNode(t)
	c := open(t, tn.lpURL, lpclient.Options{Params: map[string]string{"user": "ann"}, Reconnect: true})
	join(t, c, "room:r1", nil)
	join(t, c, "room:r2", map[string]string{"user": "annie"})
	first := c.Token()
	jr1, jr2 := c.JoinRef("room:r1"), c.JoinRef("room:r2")

	// The app names the socket user:ann; a disconnect ends the session.
	tn.post(t, "/api/disconnect", `{"id":"user:ann"}`)
	ctx := ctxFor(t)
	for c.Reconnects() == 0 {
		if ctx.Err() != nil {
			t.Fatalf("no reconnect (losses %v)", c.Losses())
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	losses := c.Losses()
	if len(losses) != 1 || !errors.Is(losses[0].Err, lpclient.ErrSessionGone) {
		t.Errorf("losses %v, want one ErrSessionGone", losses)
	}
	if c.Token() == first {
		t.Error("same token after the reconnect")
	}
	// Both channels are rejoined with fresh join_refs and their params.
	for topic, old := range map[string]string{"room:r1": jr1, "room:r2": jr2} {
		jr := c.JoinRef(topic)
		if jr == old || jr == "" {
			t.Errorf("%s: join_ref %q after the reconnect (before %q)", topic, jr, old)
		}
		r, err := c.AwaitReply(ctx, jr)
		if err != nil || r.Status != "ok" || r.Topic != topic {
			t.Fatalf("rejoin of %s: %v %v", topic, r, err)
		}
	}
	// The rejoined channels work: presence under the join param's user,
	// broadcasts.
	m, err := c.Await(ctx, func(m wsclient.Message) bool {
		return wsclient.IsEvent("room:r2", "presence_state")(m) && m.JoinRef == channels.StringRef(c.JoinRef("room:r2"))
	})
	if err != nil || !strings.Contains(string(m.Payload), `"annie"`) {
		t.Fatalf("presence_state after the rejoin: %v %v", m, err)
	}
	ref, err := c.Push("room:r1", "new_msg", map[string]string{"body": "back"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.AwaitReply(ctx, ref); err != nil || r.Status != "ok" {
		t.Fatalf("new_msg after the rejoin: %v %v", r, err)
	}
	if m, err := c.Await(ctx, wsclient.IsEvent("room:r1", "new_msg")); err != nil || chatOf(t, m) != (chat{"back", "ann"}) {
		t.Fatalf("broadcast after the rejoin: %v %v", m, err)
	}
}

func TestLostSessionEndsClientWithoutReconnect(t *testing.T) {
	tn := startNode(t)
	c := open(t, tn.lpURL, lpclient.Options{Params: map[string]string{"user": "ann"}})
	join(t, c, "room:x", nil)
	tn.post(t, "/api/disconnect", `{"id":"user:ann"}`)
	select {
	case <-c.Done():
	case <-time.After(testTimeout):
		t.Fatal("the client did not end")
	}
	if !errors.Is(c.Err(), lpclient.ErrSessionGone) {
		t.Errorf("Err %v, want ErrSessionGone", c.Err())
	}
	// Queued messages stay readable, then Await reports the end.
	_ = c.Queued()
	if _, err := c.Await(ctxFor(t), wsclient.IsEvent("room:x", "never")); !errors.Is(err, lpclient.ErrClosed) {
		t.Errorf("Await after the end: %v", err)
	}
	if err := c.Send(channels.Message{Topic: "room:x", Event: "ping"}); !errors.Is(err, lpclient.ErrClosed) {
		t.Errorf("Send after the end: %v", err)
	}
	if c.Reconnects() != 0 {
		t.Errorf("reconnects %d", c.Reconnects())
	}
}

func TestReconnectAfterNodeRestart(t *testing.T) {
	tn := startNode(t)
	addr := tn.Addr().String()
	c := open(t, tn.lpURL, lpclient.Options{Reconnect: true, ReconnectAfter: func(int) time.Duration { return 50 * time.Millisecond }})
	join(t, c, "room:z", map[string]string{"user": "zed"})
	ctx := ctxFor(t)
	if err := tn.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// The same address again, a new node without the session.
	var n2 *node.Node
	appOpts := app.Options{Endpoint: func() *channels.Endpoint { return n2.Endpoint() }}
	n2, err := node.New(node.Config{Addr: addr, Router: app.Router(appOpts), SocketHandler: app.SocketHandler(appOpts),
		Logger: slog.New(slog.DiscardHandler), ShutdownTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Start(); err != nil {
		t.Skipf("restarting on %s: %v", addr, err) // the port was taken meanwhile
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n2.Shutdown(sctx)
	})
	for c.Reconnects() == 0 {
		if ctx.Err() != nil {
			t.Fatalf("no reconnect (losses %v)", c.Losses())
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	if r, err := c.AwaitReply(ctx, c.JoinRef("room:z")); err != nil || r.Status != "ok" {
		t.Fatalf("rejoin: %v %v", r, err)
	}
	if len(c.Losses()) == 0 {
		t.Error("no loss recorded")
	}
}

func TestOpenRefused(t *testing.T) {
	tn := startNode(t, func(c *node.Config) { c.AllowedOrigins = []string{"https://app.example"} })
	_, err := lpclient.Open(ctxFor(t), tn.lpURL, lpclient.Options{Header: http.Header{"Origin": {"https://evil.example"}}})
	if !errors.Is(err, lpclient.ErrForbidden) {
		t.Errorf("Open from a refused origin: %v, want ErrForbidden", err)
	}
	c := open(t, tn.lpURL, lpclient.Options{Header: http.Header{"Origin": {"https://app.example"}}})
	join(t, c, "room:o", nil)
	_, err = lpclient.Open(ctxFor(t), "http://"+tn.Addr().String()+"/nope", lpclient.Options{})
	if err == nil || !errors.Is(err, lpclient.ErrBadAnswer) {
		t.Errorf("Open on a path without long-poll: %v, want ErrBadAnswer", err)
	}
}

func TestCloseLeavesNothing(t *testing.T) {
	tn := startNode(t)
	ignore := goleak.IgnoreCurrent()
	c, err := lpclient.Open(ctxFor(t), tn.lpURL, lpclient.Options{Reconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	join(t, c, "room:c", map[string]string{"user": "cy"})
	if _, err := c.Push("room:c", "new_msg", map[string]string{"body": "x"}); err != nil {
		t.Fatal(err)
	}
	// Close with a poll in flight and maybe a POST.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(c.Err(), lpclient.ErrClientClosed) {
		t.Errorf("Err %v", c.Err())
	}
	if len(c.Losses()) != 0 || c.Reconnects() != 0 {
		t.Errorf("Close counted as a loss: %v", c.Losses())
	}
	goleak.VerifyNone(t, ignore)
}

// A channel the server ends with phx_error (the conformance channel's
// crash) is joined again in the same session after RejoinAfter, with its
// params function called again; Observe sees every message, the
// phx_error and the rejoin's reply included, before they are queued.
func TestRejoinAfterPhxError(t *testing.T) {
	tn := startNode(t)
	var mu sync.Mutex
	calls := 0
	var observed []string
	c := open(t, tn.lpURL, lpclient.Options{
		RejoinAfter: func(int) time.Duration { return 10 * time.Millisecond },
		Observe: func(m wsclient.Message) {
			mu.Lock()
			observed = append(observed, m.Event)
			mu.Unlock()
		},
	})
	const topic = "conformance:lprejoin"
	join(t, c, topic, func() any {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return map[string]int{"call": calls}
	})
	first := c.JoinRef(topic)
	if _, err := c.Push(topic, "crash", nil); err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	if _, err := c.Await(ctx, wsclient.IsEvent(topic, "phx_error")); err != nil {
		t.Fatalf("no phx_error after the crash: %v", err)
	}
	r, err := c.Await(ctx, func(m wsclient.Message) bool {
		return m.Event == channels.EventReply && m.Topic == topic && m.Ref == m.JoinRef && m.Ref != channels.StringRef(first)
	})
	if err != nil || r.Status != "ok" {
		t.Fatalf("rejoin reply: %v %v", r, err)
	}
	mu.Lock()
	n, seen := calls, append([]string(nil), observed...)
	mu.Unlock()
	if n != 2 {
		t.Errorf("params evaluated %d times, want 2 (join, rejoin)", n)
	}
	if len(seen) < 3 || seen[0] != "phx_reply" || seen[1] != "phx_error" || seen[2] != "phx_reply" {
		t.Errorf("observed %v, want the join reply, phx_error, the rejoin reply", seen)
	}
	ref, err := c.Push(topic, "broadcast", map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.AwaitReply(ctx, ref); err != nil || r.Status != "ok" {
		t.Fatalf("broadcast after the rejoin: %v %v", r, err)
	}
	if _, err := c.Await(ctx, wsclient.IsEvent(topic, "broadcast")); err != nil {
		t.Fatalf("the rejoined channel does not receive its broadcast: %v", err)
	}
	if c.Reconnects() != 0 {
		t.Errorf("reconnected %d times; the rejoin is in the same session", c.Reconnects())
	}
}
