package transport

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
)

// memNet is an in-process cluster for the relay: pubsub.Callers that
// reach each other by node id, with the contract of pubsub.Caller
// (ErrNoNode for a node that is not there). pubsub/redis has its own
// tests of the contract over Redis; test/conformance runs the relay on it.
type memNet struct {
	mu    sync.Mutex
	nodes map[string]map[string]pubsub.CallHandler
	calls int
	// largest is the largest request or answer that crossed, in bytes.
	largest int
	// max, when set, is the most one message carries, as
	// --redis-max-message-size bounds pubsub/redis.
	max int
}

func newMemNet() *memNet { return &memNet{nodes: map[string]map[string]pubsub.CallHandler{}} }

func (n *memNet) caller(id string) *memCaller {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nodes[id] = map[string]pubsub.CallHandler{}
	return &memCaller{net: n, id: id}
}

// kill makes the node unreachable, as a killed process is.
func (n *memNet) kill(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.nodes, id)
}

type memCaller struct {
	net *memNet
	id  string
}

func (c *memCaller) NodeID() string { return c.id }

// MaxMessageSize is the bound pubsub/redis advertises.
func (c *memCaller) MaxMessageSize() int {
	if c.net.max == 0 {
		return 1 << 30
	}
	return c.net.max
}

func (c *memCaller) HandleCalls(service string, h pubsub.CallHandler) {
	c.net.mu.Lock()
	defer c.net.mu.Unlock()
	if hs := c.net.nodes[c.id]; hs != nil {
		hs[service] = h
	}
}

func (c *memCaller) Call(ctx context.Context, node, service string, req []byte) ([]byte, error) {
	c.net.mu.Lock()
	hs, ok := c.net.nodes[node]
	h := hs[service]
	c.net.calls++
	c.net.largest = max(c.net.largest, len(req))
	c.net.mu.Unlock()
	switch {
	case !ok:
		return nil, pubsub.ErrNoNode
	case h == nil:
		return nil, pubsub.ErrCallRejected
	case c.net.max > 0 && len(req) > c.net.max:
		return nil, pubsub.ErrTooLarge
	}
	// The request crosses the wire: the handler gets its own copy.
	out := make(chan []byte, 1)
	go func() { out <- h(ctx, bytes.Clone(req)) }()
	select {
	case b := <-out:
		c.net.mu.Lock()
		c.net.largest = max(c.net.largest, len(b))
		c.net.mu.Unlock()
		if c.net.max > 0 && len(b) > c.net.max {
			return nil, pubsub.ErrTooLarge
		}
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// relayPair is two long-poll handlers, nodes "a" and "b", on one memNet.
func relayPair(t *testing.T, cfg LongPollConfig) (*memNet, *lpHarness, *lpHarness) {
	t.Helper()
	return relayPairWith(t, cfg, func(*memNet) {})
}

// relayPairWith is relayPair on a memNet that set adjusts first.
func relayPairWith(t *testing.T, cfg LongPollConfig, set func(*memNet)) (*memNet, *lpHarness, *lpHarness) {
	t.Helper()
	mn := newMemNet()
	set(mn)
	ca, cb := cfg, cfg
	ca.NodeID, ca.Relay = "a", mn.caller("a")
	cb.NodeID, cb.Relay = "b", mn.caller("b")
	epA, epB := newFakeEndpoint(), newFakeEndpoint()
	epA.echo = true
	return mn, newLPHarness(t, ca, epA), newLPHarness(t, cb, epB)
}

// Item 40: every request of a session may reach either node; the owner
// serves it, and the client cannot tell.
func TestLongPollRelayServesOnTheOwner(t *testing.T) {
	_, a, b := relayPair(t, LongPollConfig{Window: waitLimit})
	tok, sock := a.open(t, "vsn=2.0.0&user=ann")
	if node, _ := longPollTokenNode(tok); node != "a" {
		t.Fatalf("token names %q, want a", node)
	}

	// POST through b: the lines reach the socket on a, in order.
	l1 := `["1","1","room:lobby","phx_join",{}]`
	l2 := `["1","2","room:lobby","new_msg",{"body":"via b"}]`
	if r := b.post(t, tok, l1+"\n"+l2); r.HTTP != 200 || r.Raw != `{"status":200}` {
		t.Fatalf("relayed POST: HTTP %d %s", r.HTTP, r.Raw)
	}
	if f := sock.nextFrame(t); string(f.data) != l1 {
		t.Fatalf("first frame on the owner = %q", f.data)
	}
	if f := sock.nextFrame(t); string(f.data) != l2 {
		t.Fatalf("second frame on the owner = %q", f.data)
	}

	// GET through b: the echoes buffered on a come back, with the
	// headers of a JSON answer and a token that still names a.
	r := b.get(t, lpTokenQuery(tok))
	if r.HTTP != 200 || r.Status != 200 || len(r.msgs()) != 2 || r.msgs()[0] != l1 || r.msgs()[1] != l2 {
		t.Fatalf("relayed poll: HTTP %d %s", r.HTTP, r.Raw)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("relayed answer Content-Type %q", ct)
	}
	if ao := r.Header.Get("Access-Control-Allow-Origin"); ao != "*" {
		t.Fatalf("relayed answer Access-Control-Allow-Origin %q", ao)
	}
	tok = r.token(t)
	if node, _ := longPollTokenNode(tok); node != "a" {
		t.Fatalf("relayed poll's token names %q, want a", node)
	}

	// A poll waiting through b answers as soon as a has a message.
	done := make(chan lpResp, 1)
	go func() { done <- b.get(t, lpTokenQuery(tok)) }()
	a.awaitWaiting(t, sock)
	push := `[null,null,"room:lobby","new_msg",{"body":"to ann"}]`
	if err := sock.conn.Send(channels.Frame{Data: []byte(push)}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.Status != 200 || len(r.msgs()) != 1 || r.msgs()[0] != push {
			t.Fatalf("relayed waiting poll: %s", r.Raw)
		}
	case <-time.After(waitLimit / 2):
		t.Fatal("the relayed waiting poll did not answer when the message arrived")
	}

	if n := b.ep.connects(); n != 0 {
		t.Fatalf("b ran %d connects: a relayed request must not open a session there", n)
	}
	if n := b.h.Sessions(); n != 0 {
		t.Fatalf("b holds %d sessions", n)
	}
	if n := b.h.Stats().Relayed.Load(); n != 3 {
		t.Fatalf("b relayed %d requests, want 3", n)
	}
	if n := a.h.Stats().Relayed.Load(); n != 0 {
		t.Fatalf("a relayed %d requests, want 0 (they were all its own)", n)
	}
}

// A session whose node is gone: a GET gets a new session on the node it
// reached (410 with a token naming that node), a POST gets 410.
func TestLongPollRelayOwnerGone(t *testing.T) {
	mn, a, b := relayPair(t, LongPollConfig{})
	tok, _ := a.open(t, "vsn=2.0.0")
	mn.kill("a")

	if r := b.post(t, tok, `["1","1","room:lobby","phx_join",{}]`); r.HTTP != 200 || r.Raw != `{"status":410}` {
		t.Fatalf("POST for a gone node: HTTP %d %s", r.HTTP, r.Raw)
	}
	r := b.get(t, lpTokenQuery(tok))
	if r.HTTP != 200 || r.Status != 410 || r.Messages == nil || len(r.msgs()) != 0 {
		t.Fatalf("GET for a gone node: HTTP %d %s", r.HTTP, r.Raw)
	}
	if node, _ := longPollTokenNode(r.token(t)); node != "b" {
		t.Fatalf("new session's token names %q, want b", node)
	}
	if n := b.h.Sessions(); n != 1 {
		t.Fatalf("b holds %d sessions, want the new one", n)
	}
	if n := b.h.Stats().RelayFailures.Load(); n != 2 {
		t.Fatalf("RelayFailures = %d, want 2", n)
	}
	// The new session works on b.
	if r := b.post(t, r.token(t), `["1","1","room:lobby","phx_join",{}]`); r.Raw != `{"status":200}` {
		t.Fatalf("POST on the new session: %s", r.Raw)
	}
}

// A forged token (or one from a restarted owner) is verified by the node
// it names: the relay carries it there, and there it is invalid.
func TestLongPollRelayForgedToken(t *testing.T) {
	_, a, b := relayPair(t, LongPollConfig{})
	var sess [lpSessionIDLen]byte
	forged := signLongPollToken([]byte("not a's key"), lpToken{NodeID: "a", Session: sess, Issued: time.Now()})
	if r := b.post(t, forged, `["1","1","room:lobby","phx_join",{}]`); r.Raw != `{"status":410}` {
		t.Fatalf("POST with a forged token: %s", r.Raw)
	}
	r := b.get(t, lpTokenQuery(forged))
	if r.Status != 410 {
		t.Fatalf("GET with a forged token: %s", r.Raw)
	}
	// The owner answered: a new session there, none on b.
	if node, _ := longPollTokenNode(r.token(t)); node != "a" {
		t.Fatalf("new session on %q, want a (the owner served the request)", node)
	}
	if a.h.Stats().BadTokens.Load() != 2 || b.h.Stats().RelayFailures.Load() != 0 {
		t.Fatalf("a.BadTokens=%d b.RelayFailures=%d", a.h.Stats().BadTokens.Load(), b.h.Stats().RelayFailures.Load())
	}
}

// A relayed request is served where it lands, whatever its token names:
// never relayed again (no loops between nodes that disagree).
func TestLongPollRelayedRequestIsNotRelayedAgain(t *testing.T) {
	mn, a, _ := relayPair(t, LongPollConfig{})
	var sess [lpSessionIDLen]byte
	elsewhere := signLongPollToken([]byte("k"), lpToken{NodeID: "b", Session: sess, Issued: time.Now()})
	req, err := http.NewRequest(http.MethodPost, "/socket/longpoll?vsn=2.0.0&token="+elsewhere, strings.NewReader("[]"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	before := mn.calls
	ans := a.h.serveRelayed(context.Background(), appendRelayRequest(nil, req, []byte("[]")))
	status, _, body, err := decodeRelayAnswer(ans)
	if err != nil || status != 200 || string(body) != `{"status":410}` {
		t.Fatalf("answer %d %q %v", status, body, err)
	}
	if mn.calls != before {
		t.Fatal("the relayed request was relayed again")
	}
}

// The body bound applies before relaying.
func TestLongPollRelayBodyTooLarge(t *testing.T) {
	mn, a, b := relayPair(t, LongPollConfig{MaxBody: 64})
	tok, _ := a.open(t, "vsn=2.0.0")
	before := mn.calls
	r := b.post(t, tok, strings.Repeat("x", 65))
	if r.HTTP != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized relayed POST: HTTP %d %s", r.HTTP, r.Raw)
	}
	if mn.calls != before {
		t.Fatal("an oversized body was relayed")
	}
}

func TestRelayFramesRoundTrip(t *testing.T) {
	req, _ := http.NewRequest(http.MethodPost, "/socket/longpoll?vsn=2.0.0&token=a&token=b", nil)
	req.Header.Set("Origin", "https://example.com")
	req.Header.Add("X-Phoenix-Authtoken", "t1")
	req.Header.Set("Connection", "keep-alive")
	req.RemoteAddr = "127.0.0.1:5555"
	body := []byte("line1\nline2\x00")
	got, err := decodeRelayRequest(context.Background(), appendRelayRequest(nil, req, body))
	if err != nil {
		t.Fatal(err)
	}
	gb := new(bytes.Buffer)
	_, _ = gb.ReadFrom(got.Body)
	if got.Method != "POST" || got.URL.RequestURI() != req.URL.RequestURI() || got.RemoteAddr != req.RemoteAddr ||
		got.Header.Get("Origin") != "https://example.com" || got.Header.Get("X-Phoenix-Authtoken") != "t1" ||
		got.Header.Get("Connection") != "" || !bytes.Equal(gb.Bytes(), body) {
		t.Fatalf("request round trip: %+v body %q", got, gb.Bytes())
	}
	h := http.Header{"Content-Type": {"application/json"}, "Retry-After": {"5"}}
	st, gh, gbody, err := decodeRelayAnswer(appendRelayAnswer(nil, 503, h, []byte("x")))
	if err != nil || st != 503 || gh.Get("Retry-After") != "5" || string(gbody) != "x" {
		t.Fatalf("answer round trip: %d %v %q %v", st, gh, gbody, err)
	}
}

func FuzzRelayFrames(f *testing.F) {
	req, _ := http.NewRequest(http.MethodGet, "/socket/longpoll?vsn=2.0.0", nil)
	req.Header.Set("Origin", "https://example.com")
	f.Add(appendRelayRequest(nil, req, []byte("body")))
	f.Add(appendRelayAnswer(nil, 200, http.Header{"A": {"b"}}, []byte("{}")))
	f.Add([]byte{3, 'G', 'E', 'T', 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		if r, err := decodeRelayRequest(context.Background(), data); err == nil {
			if r.Method != http.MethodGet && r.Method != http.MethodPost && r.Method != http.MethodOptions {
				t.Fatalf("accepted method %q", r.Method)
			}
			if r.URL.IsAbs() {
				t.Fatalf("accepted absolute URI %q", r.URL)
			}
		}
		if st, _, _, err := decodeRelayAnswer(data); err == nil && (st < 100 || st > 599) {
			t.Fatalf("accepted status %d", st)
		}
	})
}

// Issue 16 §3: a 40 MiB relayed answer made Redis drop both nodes'
// connections. Whatever is buffered, a relayed answer and a relayed
// request stay within maxRelayMessage, well under Redis's limits, and
// the messages arrive over several polls, none lost.
func TestLongPollRelayBounded(t *testing.T) {
	mn, a, b := relayPair(t, LongPollConfig{MaxBufferedBytes: 64 << 20, MaxBody: 16 << 20, MaxAnswerBytes: 64 << 20})
	tok, sock := a.open(t, "vsn=2.0.0")
	var want []string
	for i := range 12 {
		f := lpFrame(i, 1<<20)
		want = append(want, string(f))
		if err := sock.conn.Send(channels.Frame{Data: f}); err != nil {
			t.Fatal(err)
		}
	}
	pollAll(t, b, tok, want, nil)
	// A body that MaxBody allows but the relay cannot carry is refused
	// whole on the relaying node.
	before := mn.calls
	r := b.post(t, tok, strings.Repeat(`[null,"1","phoenix","heartbeat",{}]`+"\n", (maxRelayMessage/36)+1))
	if r.HTTP != http.StatusRequestEntityTooLarge || r.Raw != `{"status":413}` {
		t.Fatalf("POST above the relay's bound: HTTP %d %s", r.HTTP, r.Raw)
	}
	if mn.calls != before {
		t.Fatal("a body above the relay's bound was relayed")
	}
	mn.mu.Lock()
	largest := mn.largest
	mn.mu.Unlock()
	if largest > maxRelayMessage || maxRelayMessage > 8<<20 {
		t.Fatalf("%d bytes crossed the relay in one message (bound %d)", largest, maxRelayMessage)
	}
	t.Logf("largest relay message: %d bytes", largest)
}

// A Caller that carries less than maxRelayMessage in one message (a
// --redis-max-message-size below it) bounds the answers too: relayed
// polls still deliver every message, over more answers, and none fails
// as too large with its messages already taken from the session.
func TestLongPollRelayFollowsTheCallersBound(t *testing.T) {
	const bound = 256 << 10
	mn, a, b := relayPairWith(t, LongPollConfig{MaxBufferedBytes: 64 << 20}, func(n *memNet) { n.max = bound })
	tok, sock := a.open(t, "vsn=2.0.0")
	var want []string
	for i := range 12 {
		f := lpFrame(i, 60<<10)
		want = append(want, string(f))
		if err := sock.conn.Send(channels.Frame{Data: f}); err != nil {
			t.Fatal(err)
		}
	}
	pollAll(t, b, tok, want, nil)
	mn.mu.Lock()
	defer mn.mu.Unlock()
	if mn.largest > bound {
		t.Fatalf("%d bytes crossed a relay that carries %d", mn.largest, bound)
	}
}

// A message that cannot cross the relay even alone ends the session: the
// client learns it by {"status":410} instead of never seeing it.
func TestLongPollRelayMessageTooLarge(t *testing.T) {
	_, a, b := relayPair(t, LongPollConfig{MaxBufferedBytes: 64 << 20})
	tok, sock := a.open(t, "vsn=2.0.0")
	if err := sock.conn.Send(channels.Frame{Data: lpFrame(0, maxRelayMessage+1)}); err != nil {
		t.Fatal(err)
	}
	if r := b.get(t, lpTokenQuery(tok)); r.Status != 410 {
		t.Fatalf("relayed poll of a message too large to relay: %.200s", r.Raw)
	}
	sock.awaitClose(t)
	if n := a.h.Stats().RelayTooLarge.Load(); n != 1 {
		t.Fatalf("RelayTooLarge = %d", n)
	}
}

// Issue 16 §3: relayed long-poll requests ran without recover, so one
// panic there took the owner down. It is answered 500 instead, and the
// node carries on.
func TestLongPollRelayedPanic(t *testing.T) {
	_, a, b := relayPair(t, LongPollConfig{})
	boom := true
	a.ep.onFrame = func(*fakeSocket, []byte, bool) {
		if boom {
			boom = false
			panic("injected")
		}
	}
	tok, _ := a.open(t, "vsn=2.0.0")
	// The call handler runs as the pubsub runs it: on a goroutine of its
	// own, where an unrecovered panic would end the test binary.
	req := appendRelayRequest(nil, b.req(t, http.MethodPost, lpTokenQuery(tok), ""), []byte(`[null,"1","phoenix","heartbeat",{}]`))
	out := make(chan []byte, 1)
	go func() { out <- a.h.serveRelayed(context.Background(), req) }()
	var ans []byte
	select {
	case ans = <-out:
	case <-time.After(waitLimit):
		t.Fatal("no answer")
	}
	status, hdr, body, err := decodeRelayAnswer(ans)
	if err != nil || status != http.StatusInternalServerError || string(body) != `{"status":500}` || hdr.Get("Content-Type") == "" {
		t.Fatalf("answer to a panicking request: %d %v %q %v", status, hdr, body, err)
	}
	if n := a.h.Stats().Panics.Load(); n != 1 {
		t.Fatalf("Panics = %d", n)
	}
	// The session and the node carry on.
	if r := b.post(t, tok, `[null,"2","phoenix","heartbeat",{}]`); r.Raw != `{"status":200}` {
		t.Fatalf("POST after the panic: %s", r.Raw)
	}
}

// failingWriter is a client connection that breaks when written to.
type failingWriter struct{ h http.Header }

func (f *failingWriter) Header() http.Header         { return f.h }
func (f *failingWriter) WriteHeader(int)             {}
func (f *failingWriter) Write(p []byte) (int, error) { return 0, io.ErrClosedPipe }

// When the relaying node cannot deliver an answer that carried messages,
// the owner is told and ends the session, as it does when its own write
// fails: the client learns of the loss ({"status":410}) instead of never
// seeing those messages.
func TestLongPollRelayUndelivered(t *testing.T) {
	_, a, b := relayPair(t, LongPollConfig{Window: waitLimit})
	tok, sock := a.open(t, "vsn=2.0.0")
	if err := sock.conn.Send(channels.Frame{Data: []byte(`["m"]`)}); err != nil {
		t.Fatal(err)
	}
	b.h.ServeHTTP(&failingWriter{h: http.Header{}}, b.req(t, http.MethodGet, lpTokenQuery(tok), ""))
	sock.awaitClose(t)
	if r := b.get(t, lpTokenQuery(tok)); r.Status != 410 {
		t.Fatalf("poll after an undelivered answer: %s", r.Raw)
	}
	// The notice is the relay's own: a client cannot send it.
	tok2, sock2 := a.open(t, "vsn=2.0.0")
	if r := b.do(t, b.req(t, relayUndelivered, lpTokenQuery(tok2), "")); r.HTTP != http.StatusBadRequest {
		t.Fatalf("notice from a client: HTTP %d %s", r.HTTP, r.Raw)
	}
	select {
	case <-sock2.closed:
		t.Fatal("a client's notice ended its session")
	default:
	}
}
