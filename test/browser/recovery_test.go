package browser

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/channelsd/channelsd/test/harness"
)

// recoveryWait bounds what follows a drain: the node's exit, the page's
// reconnect with backoff through the load balancer (which takes about a
// second to stop sending to the draining node), the rejoin and its replay.
const recoveryWait = 30 * time.Second

func TestDemoPageRecoversAcrossDrain(t *testing.T) {
	chromiumPath(t) // fail before starting a cluster
	cl := harness.Start(t, harness.Options{Nodes: 2, LogLevel: "info",
		// One socket to close: the drain's first (only) batch closes it at
		// once; a short window makes the node exit soon after.
		Env: map[string]string{"CHANNELS_DRAIN_WINDOW": "1s"},
	})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	api := &http.Client{Timeout: 5 * time.Second}
	b := newBrowser(t, ctx)
	tab := b.tab(nil)

	open := func(room string) {
		t.Helper()
		b.do(tab, "reader joins "+room+" through the load balancer",
			chromedp.Navigate(lb.HTTPURL()+"/"),
			chromedp.WaitVisible("#login"),
			chromedp.SetValue("#name", "reader"),
			chromedp.SetValue("#room", room),
			chromedp.Click("#login button"),
			chromedp.WaitVisible("#chat"),
		)
		b.await(tab, "the page is online", `document.getElementById("status").textContent === "online as reader"`, presenceWait)
	}
	numbered := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "publisher: n=" + strconv.Itoa(i+1)
		}
		return out
	}

	// A first join asks for the room's last 50 broadcasts: the 10 sent
	// before the page opened show, in order.
	const oldRoom = "browser-history"
	for i := 1; i <= 10; i++ {
		if _, err := publish(ctx, api, cl.Node(1+i%2).HTTPURL(), "room:"+oldRoom, i); err != nil {
			t.Fatal(err)
		}
	}
	open(oldRoom)
	b.await(tab, "the page shows the room's 10 earlier messages", `document.querySelectorAll("#messages li").length >= 10`, presenceWait)
	if got, want := messages(b, tab), numbered(10); !slices.Equal(got, want) {
		t.Errorf("after a first join of a room with 10 messages the page shows %q, want %q", got, want)
	}
	if d := dataset(b, tab); d["joins"] != "1" || d["since"] != "" || d["recovered"] != "" || d["position"] == "" {
		t.Errorf("first join: the page's join record is %v, want one join without since, with a position and no recovered flag", d)
	}
	b.screenshot(tab, "history-on-first-join")

	// The page of a new room, and which node holds its socket.
	const room = "browser-drain"
	topic := "room:" + room
	open(room)
	holder := socketHolder(ctx, t, cl)
	other := 3 - holder
	t.Logf("the page's socket is on node %d (%s); publishing through node %d", holder, cl.Node(holder).ID, other)

	// The publisher: numbered messages through the node that stays, one
	// every 100 ms, each acknowledged with its position before the next.
	const total = 60
	type sent struct {
		pos string
		err error
	}
	results := make(chan sent, total)
	apiURL := cl.Node(other).HTTPURL()
	go func() {
		defer close(results)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 1; i <= total; i++ {
			pos, err := publish(ctx, api, apiURL, topic, i)
			results <- sent{pos, err}
			if err != nil {
				return
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
	}()

	// Live delivery works before the drain.
	b.await(tab, "the page shows n=10 live", hasMessage("n=10"), presenceWait)
	b.screenshot(tab, "before-drain")

	// SIGTERM to the node holding the socket: it drains (not ready, new
	// sockets refused, the page's socket closed with 1012) and exits; a
	// new container takes its place, as in a rolling update. The page's
	// new sockets fail meanwhile, so that it is certainly away while
	// messages are published, however fast it would have found the
	// other node.
	refused := refuser(t)
	blockSockets(b, tab, refused, true)
	r := cl.ReplaceNode(holder, 30*time.Second)
	t.Logf("%s drained and stopped in %v (exit code %d); replaced by %s", r.ID, r.Stopping.Round(time.Millisecond), r.ExitCode, cl.Node(holder).ID)
	if r.ExitCode != 0 || !strings.Contains(r.Logs, "node: draining") {
		t.Errorf("%s did not drain and exit cleanly (exit code %d); log:\n%s", r.ID, r.ExitCode, r.Logs)
	}
	b.await(tab, "the page has lost its socket", `document.getElementById("status").textContent === "offline, reconnecting…"`, presenceWait)
	b.screenshot(tab, "offline")
	blockSockets(b, tab, refused, false)

	b.await(tab, "the page shows n=60", hasMessage("n="+strconv.Itoa(total)), recoveryWait)
	b.screenshot(tab, "after-recovery")

	var positions []string
	for s := range results {
		if s.err != nil {
			t.Fatalf("publisher: %v", s.err)
		}
		positions = append(positions, s.pos)
	}
	if len(positions) != total {
		t.Fatalf("publisher: %d of %d messages sent", len(positions), total)
	}
	// The API's positions: one epoch, offsets rising in the order of the
	// publishes (with gaps: the room's presence diffs have positions too).
	prev := parsePosition(t, positions[0])
	for _, p := range positions[1:] {
		got := parsePosition(t, p)
		if got.epoch != prev.epoch || got.offset <= prev.offset {
			t.Fatalf("POST /api/broadcast positions are not in the order of the publishes: %q", positions)
		}
		prev = got
	}

	// Every message once, in order: the replay after the rejoin filled
	// the time the page was away, and nothing shown before came again.
	if got, want := messages(b, tab), numbered(total); !slices.Equal(got, want) {
		t.Errorf("the page shows %d messages, want n=1..n=%d once each in order:\n%q", len(got), total, got)
	}
	d := dataset(b, tab)
	joins, _ := strconv.Atoi(d["joins"])
	if joins < 2 || d["since"] == "" || d["recovered"] != "true" {
		t.Errorf("the page's latest join is %v: want a rejoin (joins >= 2) with since, answered recovered:true", d)
	}
	// The replay brought the messages published between since and the
	// reply's position: those sent while the page had no socket.
	if d["since"] != "" && d["position"] != "" {
		since, pos := parsePosition(t, d["since"]), parsePosition(t, d["position"])
		replayed := 0
		for _, p := range positions {
			if q := parsePosition(t, p); q.epoch == pos.epoch && q.offset > since.offset && q.offset <= pos.offset {
				replayed++
			}
		}
		t.Logf("the rejoin (join %d) sent since %s and was answered position %s: %d of the messages came by replay",
			joins, d["since"], d["position"], replayed)
		if replayed == 0 {
			t.Errorf("no message was published while the page was away (since %s, position %s): the test did not exercise recovery", d["since"], d["position"])
		}
	}
	now := socketHolder(ctx, t, cl)
	t.Logf("now the page's socket is on node %d (%s)", now, cl.Node(now).ID)
}

// blockSockets makes the page's new WebSockets go to refuser (a
// listener that closes every connection) while block is true, so that
// they fail as a refused connection does; open sockets are not touched.
// It wraps the page's WebSocket constructor once (DevTools request
// blocking does not cover WebSocket handshakes).
func blockSockets(b *browser, tab context.Context, refuser string, block bool) {
	b.t.Helper()
	eval[bool](b, tab, `(() => {
		window.blockSockets = `+strconv.FormatBool(block)+`;
		if (!window.WebSocket.wrapped) {
			const Real = window.WebSocket;
			window.WebSocket = class extends Real {
				constructor(url, protocols) { super(window.blockSockets ? `+jsString("ws://"+refuser+"/")+` : url, protocols); }
			};
			window.WebSocket.wrapped = true;
		}
		return true;
	})()`)
}

// refuser listens on loopback and closes every connection at once.
func refuser(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// publish posts new_msg {"user":"publisher","body":"n=<n>"} to topic
// through a node's HTTP API and returns the broadcast's position
// (PROTOCOL.md §12.9).
func publish(ctx context.Context, api *http.Client, nodeURL, topic string, n int) (string, error) {
	body, err := json.Marshal(map[string]any{"topic": topic, "event": "new_msg",
		"payload": map[string]string{"user": "publisher", "body": "n=" + strconv.Itoa(n)}})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, nodeURL+"/api/broadcast", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+harness.APIKey)
	res, err := api.Do(req)
	if err != nil {
		return "", fmt.Errorf("publishing n=%d: %w", n, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	var ans struct{ Status, Position string }
	if res.StatusCode != http.StatusAccepted || json.Unmarshal(raw, &ans) != nil || ans.Position == "" {
		return "", fmt.Errorf("publishing n=%d on %s: HTTP %d %s", n, nodeURL, res.StatusCode, bytes.TrimSpace(raw))
	}
	return ans.Position, nil
}

type position struct {
	epoch  string
	offset int64
}

// parsePosition reads "<epoch>:<offset>" (PROTOCOL.md §12.1).
func parsePosition(t *testing.T, s string) position {
	t.Helper()
	i := strings.LastIndexByte(s, ':')
	off, err := strconv.ParseInt(s[i+1:], 10, 64)
	if i <= 0 || err != nil {
		t.Fatalf("not a position: %q", s)
	}
	return position{s[:i], off}
}

// messages reads the page's message list as "<user>: <body>" lines.
func messages(b *browser, tab context.Context) []string {
	return eval[[]string](b, tab, `[...document.querySelectorAll("#messages li")].map(li =>
		li.querySelector("b").textContent + ": " + li.querySelector("span").textContent)`)
}

// hasMessage is a JavaScript test for a message with body in the list.
func hasMessage(body string) string {
	return `[...document.querySelectorAll("#messages li span")].some(s => s.textContent === ` + jsString(body) + `)`
}

// dataset is what the page records of its latest join on <body>
// (cmd/channelsd/app/web/app.js): joins, since, position, recovered.
func dataset(b *browser, tab context.Context) map[string]string {
	return eval[map[string]string](b, tab, `Object.assign({}, document.body.dataset)`)
}

// socketHolder waits until exactly one WebSocket is open on the cluster
// (the page's; an earlier page's may still be closing) and returns its
// node.
func socketHolder(ctx context.Context, t *testing.T, cl *harness.Cluster) int {
	t.Helper()
	deadline := time.Now().Add(presenceWait)
	for {
		counts := make([]int, cl.N()+1)
		sum, holder := 0, 0
		for i := 1; i <= cl.N(); i++ {
			counts[i] = websockets(ctx, t, cl.Node(i).HTTPURL())
			sum += counts[i]
			if counts[i] == 1 {
				holder = i
			}
		}
		if sum == 1 {
			return holder
		}
		if time.Now().After(deadline) {
			t.Fatalf("not one WebSocket on the cluster within %v: per node %v", presenceWait, counts[1:])
		}
		time.Sleep(100 * time.Millisecond) // polling the nodes' metrics
	}
}

// websockets reads channelsd_sockets{transport="websocket"} from a node's
// /metrics.
func websockets(ctx context.Context, t *testing.T, nodeURL string) int {
	t.Helper()
	const name = `channelsd_sockets{transport="websocket"}`
	m, err := harness.Metrics(ctx, nodeURL, name)
	if err != nil {
		t.Fatal(err)
	}
	return int(m[name])
}
