package conformance

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport"
)

// Long-poll (PROTOCOL.md §8; checklist items 36 to 42 of §11) against
// the real node. Most tests need a LongPollConfig of their own (a short
// window...), so they serve a test-only mux: <socket path>/longpoll → a
// LongPollHandler on the node's endpoint, everything else → n.Handler().
// Item 40 uses the nodes' own long-poll transport
// (longpoll_cluster_test.go).

type lpNode struct {
	*testNode
	lp     *transport.LongPollHandler // nil: the node's own
	url    string                     // http://127.0.0.1:port/socket/longpoll
	client *http.Client
}

func startLPNode(t *testing.T, cfg transport.LongPollConfig, opts ...func(*node.Config)) *lpNode {
	t.Helper()
	tn := startNode(t, opts...)
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	lp, err := transport.NewLongPollHandler(transport.FromEndpoint(tn.Endpoint()), cfg)
	if err != nil {
		t.Fatalf("NewLongPollHandler: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/socket/longpoll", lp)
	mux.Handle("/", tn.Handler())
	srv := httptest.NewServer(mux)
	// Runs before the node's shutdown (registered earlier): sessions end,
	// their channels terminate, their polls answer, then the server stops.
	t.Cleanup(func() {
		if err := lp.Close(); err != nil {
			t.Errorf("long-poll Close: %v", err)
		}
		srv.Close()
	})
	return &lpNode{testNode: tn, lp: lp, url: srv.URL + "/socket/longpoll", client: srv.Client()}
}

// lpAnswer is a long-poll JSON answer.
type lpAnswer struct {
	HTTP     int
	Status   int       `json:"status"`
	Token    string    `json:"token"`
	Messages *[]string `json:"messages"`
	Raw      string
}

func (n *lpNode) request(t *testing.T, method, query, body string, header http.Header) lpAnswer {
	t.Helper()
	u := n.url
	if query != "" {
		u += "?" + query
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(testCtx(t), method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if method == http.MethodPost && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/x-ndjson")
	}
	res, err := n.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := lpAnswer{HTTP: res.StatusCode, Raw: string(raw)}
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("%s %s: answer %q is not JSON", method, u, raw)
	}
	if a.HTTP != http.StatusOK {
		t.Fatalf("%s %s: HTTP %d %s", method, u, a.HTTP, raw)
	}
	return a
}

// lpClient is a long-poll client session.
type lpClient struct {
	n     *lpNode
	t     *testing.T
	v     version
	token string
	got   []string // messages received, in order
	// via, when set, replaces n: each request goes to the next node in
	// turn, as behind a round-robin load balancer.
	via  []*lpNode
	hops int
}

// target is the node the next request goes to.
func (c *lpClient) target() *lpNode {
	if len(c.via) == 0 {
		return c.n
	}
	n := c.via[c.hops%len(c.via)]
	c.hops++
	return n
}

// lpOpen opens a session with vsn v and connect params (name, value pairs).
func (n *lpNode) lpOpen(t *testing.T, v version, params ...string) *lpClient {
	t.Helper()
	q := url.Values{"vsn": {v.vsn}}
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	a := n.request(t, http.MethodGet, q.Encode(), "", nil)
	if a.Status != 410 || a.Token == "" || a.Messages == nil || len(*a.Messages) != 0 {
		t.Fatalf("opening GET: %s", a.Raw)
	}
	return &lpClient{n: n, t: t, v: v, token: a.Token}
}

func (c *lpClient) query() string {
	return "vsn=" + c.v.vsn + "&token=" + url.QueryEscape(c.token)
}

// send POSTs lines as ndjson and asserts {"status":200}.
func (c *lpClient) send(lines ...string) {
	c.t.Helper()
	if a := c.target().request(c.t, http.MethodPost, c.query(), strings.Join(lines, "\n"), nil); a.Raw != `{"status":200}` {
		c.t.Fatalf("POST: %s", a.Raw)
	}
}

// poll GETs once and records the messages.
func (c *lpClient) poll() lpAnswer {
	c.t.Helper()
	a := c.target().request(c.t, http.MethodGet, c.query(), "", nil)
	if a.Status == 200 || a.Status == 204 {
		if a.Token == "" || a.Messages == nil {
			c.t.Fatalf("poll answer without token or messages: %s", a.Raw)
		}
		c.token = a.Token
		c.got = append(c.got, *a.Messages...)
	}
	return a
}

// await polls until a received message is the JSON want; it returns the
// message's index in c.got.
func (c *lpClient) await(want string) int {
	c.t.Helper()
	deadline := time.Now().Add(testTimeout)
	seen := 0
	for time.Now().Before(deadline) {
		for ; seen < len(c.got); seen++ {
			if sameJSON([]byte(c.got[seen]), []byte(want)) {
				return seen
			}
		}
		if a := c.poll(); a.Status != 200 && a.Status != 204 {
			c.t.Fatalf("poll while waiting for %s: %s", want, a.Raw)
		}
	}
	c.t.Fatalf("%s never arrived (got %q)", want, c.got)
	return -1
}

// Item 36, both versions; refusals (connect, vsn).
func TestLongPoll_Item36_Open(t *testing.T) {
	t.Parallel()
	n := startLPNode(t, transport.LongPollConfig{},
		withSocketHandler(channels.SocketHandlerFunc(func(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
			if info.Transport != "longpoll" {
				t.Errorf("connect info transport %q", info.Transport)
			}
			if info.Params["user"] == "mallory" {
				return channels.Identity{}, &channels.ConnectError{Reason: "nope"}
			}
			return channels.Identity{ID: "user:" + info.Params["user"]}, nil
		})))
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := n.lpOpen(t, v, "user", "ann")
			c.send(string(v.frame(nil, "5", "phoenix", "heartbeat", `{}`)))
			c.await(v.want(nil, "5", "phoenix", "phx_reply", reply("ok", `{}`)))
		})
	}
	for _, q := range []string{"vsn=2.0.0&user=mallory", "vsn=3.0.0&user=ann", "vsn=two"} {
		if a := n.request(t, http.MethodGet, q, "", nil); a.Raw != `{"status":403}` {
			t.Errorf("GET ?%s: %s, want {\"status\":403}", q, a.Raw)
		}
	}
}

// Item 37: nothing → 204 after the window; a broadcast published while a
// GET waits comes back at once as a JSON string.
func TestLongPoll_Item37_Poll(t *testing.T) {
	t.Parallel()
	const window = 2 * time.Second
	n := startLPNode(t, transport.LongPollConfig{Window: window})
	c := n.lpOpen(t, v2)
	topic := "conformance:lp37"
	c.send(`["1","1","` + topic + `","phx_join",{}]`)
	c.await(`["1","1","` + topic + `","phx_reply",{"status":"ok","response":{"topic":"` + topic + `"}}]`)

	start := time.Now()
	if a := c.poll(); a.Status != 204 || len(*a.Messages) != 0 {
		t.Fatalf("empty poll: %s", a.Raw)
	} else if el := time.Since(start); el < window {
		t.Fatalf("204 after %v, before the window", el)
	}

	polls := n.lp.Stats().Polls.Load()
	done := make(chan lpAnswer, 1)
	go func() {
		a := c.n.request(t, http.MethodGet, c.query(), "", nil)
		done <- a
	}()
	// The poll has reached its session (it waits, or has answered).
	for n.lp.Stats().Polls.Load() == polls {
		time.Sleep(time.Millisecond)
	}
	start = time.Now()
	n.apiBroadcast(t, topic, "news", `{"n":1}`)
	a := <-done
	if el := time.Since(start); el > window/2 {
		t.Fatalf("the broadcast came back after %v", el)
	}
	if a.Status != 200 || len(*a.Messages) != 1 || !sameJSON([]byte((*a.Messages)[0]), []byte(`[null,null,"`+topic+`","news",{"n":1}]`)) {
		t.Fatalf("poll: %s", a.Raw)
	}
}

// Item 38: two ndjson V2 lines and one base64 binary line, in order, with
// replies on GET polls and not in the POST answer.
func TestLongPoll_Item38_Post(t *testing.T) {
	t.Parallel()
	n := startLPNode(t, transport.LongPollConfig{})
	c := n.lpOpen(t, v2)
	a := n.request(t, http.MethodPost, c.query(), strings.Join([]string{
		`["3","3","room:1","phx_join",{"user":"ann"}]`,
		`["3","4","room:1","new_msg",{"body":"hi"}]`,
		"AAEBBgYzN3Jvb206MXVwbG9hZN6tvu8=", // push "upload" de ad be ef, ref "7"
	}, "\n"), nil)
	if a.Raw != `{"status":200}` {
		t.Fatalf("POST answer %s", a.Raw)
	}
	i := c.await(`["3","3","room:1","phx_reply",{"status":"ok","response":{}}]`)
	j := c.await(`["3","4","room:1","phx_reply",{"status":"ok","response":{}}]`)
	k := c.await(`["3","7","room:1","phx_reply",{"status":"error","response":{"reason":"unknown event"}}]`)
	b := c.await(`[null,null,"room:1","new_msg",{"body":"hi","user":"ann"}]`)
	if !(i < j && j < k && i < b) {
		t.Fatalf("order: join %d, new_msg reply %d, upload reply %d, broadcast %d in %q", i, j, k, b, c.got)
	}

	// §2.4: a binary reply has no long-poll encoding: it is dropped, and
	// the session and its polls carry on.
	dropped := n.lp.Stats().DroppedBinary.Load()
	c.send(`["5","5","conformance:lp38","phx_join",{}]`,
		base64.StdEncoding.EncodeToString(cat(0, 1, 1, len("conformance:lp38"), len("binary_echo"), "5", "6", "conformance:lp38", "binary_echo", 0xff, 0x00)),
	)
	c.send(`[null,"8","phoenix","heartbeat",{}]`)
	c.await(`[null,"8","phoenix","phx_reply",{"status":"ok","response":{}}]`)
	if n.lp.Stats().DroppedBinary.Load() != dropped+1 {
		t.Fatalf("DroppedBinary %d, want %d", n.lp.Stats().DroppedBinary.Load(), dropped+1)
	}
}

// Item 39: garbage tokens.
func TestLongPoll_Item39_GarbageToken(t *testing.T) {
	t.Parallel()
	n := startLPNode(t, transport.LongPollConfig{})
	if a := n.request(t, http.MethodPost, "vsn=2.0.0&token=garbage", `[null,"1","phoenix","heartbeat",{}]`, nil); a.Raw != `{"status":410}` {
		t.Fatalf("POST: %s", a.Raw)
	}
	a := n.request(t, http.MethodGet, "vsn=2.0.0&token=garbage", "", nil)
	if a.Status != 410 || a.Token == "" || a.Token == "garbage" || a.Messages == nil {
		t.Fatalf("GET: %s", a.Raw)
	}
	// The new token is a working session.
	c := &lpClient{n: n, t: t, v: v2, token: a.Token}
	c.send(`[null,"1","phoenix","heartbeat",{}]`)
	c.await(`[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]`)
}

// Item 41 (with a short SessionTimeout): a session without GETs ends, its
// channels terminate, its presences leave, the next requests get 410.
// Item 27 for long-poll: a disconnect by id ends the session.
func TestLongPoll_Item41_SessionTimeout(t *testing.T) {
	t.Parallel()
	n := startLPNode(t, transport.LongPollConfig{Window: 100 * time.Millisecond, SessionTimeout: 500 * time.Millisecond})
	const topic = "room:lp41"
	watcher := n.dial(t, v2, "user", "bob")
	watcher.join(topic, `{}`)
	watcher.awaitState(topic)

	c := n.lpOpen(t, v2, "user", "ann")
	c.send(`["1","1","` + topic + `","phx_join",{}]`)
	c.await(`["1","1","` + topic + `","phx_reply",{"status":"ok","response":{}}]`)
	// bob's own join diff may come first.
	for d := watcher.awaitDiff(topic); len(d.Joins["ann"]) != 1; d = watcher.awaitDiff(topic) {
		if len(d.Joins["bob"]) != 1 {
			t.Fatalf("join diff %+v", d)
		}
	}
	// No GET from now on (a POST does not count).
	c.send(`[null,"2","phoenix","heartbeat",{}]`)
	if d := watcher.awaitDiff(topic); len(d.Leaves["ann"]) != 1 || len(d.Joins) != 0 {
		t.Fatalf("leave diff %+v", d)
	}
	if a := n.request(t, http.MethodPost, c.query(), `[null,"3","phoenix","heartbeat",{}]`, nil); a.Raw != `{"status":410}` {
		t.Fatalf("POST after expiry: %s", a.Raw)
	}
	if a := n.request(t, http.MethodGet, c.query(), "", nil); a.Status != 410 || a.Token == "" || a.Token == c.token {
		t.Fatalf("GET after expiry: %s", a.Raw)
	}

	// Disconnect by id: the waiting poll and later requests get 410.
	d := n.lpOpen(t, v2, "user", "dave")
	polls := n.lp.Stats().Polls.Load()
	done := make(chan lpAnswer, 1)
	go func() { done <- n.request(t, http.MethodGet, d.query(), "", nil) }()
	for n.lp.Stats().Polls.Load() == polls {
		time.Sleep(time.Millisecond)
	}
	if status := n.post(t, "/api/disconnect", `{"id":"user:dave"}`); status != http.StatusAccepted {
		t.Fatalf("POST /api/disconnect: %d", status)
	}
	// The poll may have run out its window first (204); then the next
	// request must see the session gone.
	if a := <-done; a.Status != 410 && a.Status != 204 {
		t.Fatalf("poll during disconnect: %s", a.Raw)
	}
	deadline := time.Now().Add(testTimeout)
	for {
		a := n.request(t, http.MethodPost, d.query(), `[null,"1","phoenix","heartbeat",{}]`, nil)
		if a.Raw == `{"status":410}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("session alive after disconnect")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Item 42: the last token query parameter is the session token; the
// X-Phoenix-LongPoll-Token header takes precedence over the query.
func TestLongPoll_Item42_TokenLocation(t *testing.T) {
	t.Parallel()
	n := startLPNode(t, transport.LongPollConfig{})
	c := n.lpOpen(t, v2, "token", "user-auth-token")
	hb := `[null,"1","phoenix","heartbeat",{}]`
	if a := n.request(t, http.MethodPost, "token=user-auth-token&vsn=2.0.0&token="+url.QueryEscape(c.token), hb, nil); a.Raw != `{"status":200}` {
		t.Fatalf("last query token: %s", a.Raw)
	}
	if a := n.request(t, http.MethodPost, "token="+url.QueryEscape(c.token)+"&vsn=2.0.0&token=user-auth-token", hb, nil); a.Raw != `{"status":410}` {
		t.Fatalf("first query token was used: %s", a.Raw)
	}
	h := http.Header{"X-Phoenix-Longpoll-Token": {c.token}}
	if a := n.request(t, http.MethodPost, "vsn=2.0.0&token=garbage", hb, h); a.Raw != `{"status":200}` {
		t.Fatalf("header token: %s", a.Raw)
	}
	h = http.Header{"X-Phoenix-Longpoll-Token": {"garbage"}}
	if a := n.request(t, http.MethodPost, c.query(), hb, h); a.Raw != `{"status":410}` {
		t.Fatalf("query token won over the header: %s", a.Raw)
	}
}
