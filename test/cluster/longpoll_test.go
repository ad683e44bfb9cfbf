package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Long-poll sessions behind the round-robin load balancer: every request
// of a session may reach another node, which relays it to the session's
// owner through Redis (transport/longpoll_relay.go).

// awaiter is what the WebSocket and the long-poll clients have in common
// for receiving.
type awaiter interface {
	Await(ctx context.Context, match func(wsclient.Message) bool) (wsclient.Message, error)
}

// openLP opens a long-poll client at url (the load balancer's), closed in
// t.Cleanup.
func openLP(ctx context.Context, t *testing.T, url string, opts lpclient.Options) *lpclient.Client {
	t.Helper()
	c, err := lpclient.Open(ctx, url, opts)
	if err != nil {
		t.Fatalf("long-poll open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ownerOf is the node that served c's opening GET, which owns the
// session: its index counting from 1.
func ownerOf(t *testing.T, c *lpclient.Client) int {
	t.Helper()
	reqs := c.Requests()
	if len(reqs) == 0 || !reqs[0].Open {
		t.Fatalf("no opening GET recorded: %+v", reqs)
	}
	i, err := strconv.Atoi(strings.TrimPrefix(reqs[0].ServedBy, "node"))
	if err != nil {
		t.Fatalf("opening GET served by %q", reqs[0].ServedBy)
	}
	return i
}

type chatMsg struct {
	Body string `json:"body"`
	User string `json:"user"`
}

// collectChat takes from a the next n new_msg broadcasts of topic whose
// body does not start with "sync", in arrival order.
func collectChat(ctx context.Context, t *testing.T, who string, a awaiter, topic string, n int) []chatMsg {
	t.Helper()
	var got []chatMsg
	for len(got) < n {
		m, err := a.Await(ctx, func(m wsclient.Message) bool {
			if !wsclient.IsEvent(topic, "new_msg")(m) {
				return false
			}
			var c chatMsg
			return json.Unmarshal(m.Payload, &c) == nil && !strings.HasPrefix(c.Body, "sync")
		})
		if err != nil {
			t.Fatalf("%s: awaiting new_msg %d of %d: %v", who, len(got)+1, n, err)
		}
		var c chatMsg
		_ = json.Unmarshal(m.Payload, &c)
		got = append(got, c)
	}
	return got
}

// awaitChatSync returns once a new_msg "sync..." pushed by from reaches
// to: pushes one every 300 ms, for at most 10 s (subscriptions of a node
// new to a topic become live shortly after the join).
func awaitChatSync(ctx context.Context, t *testing.T, topic string, push func(body string) error, to awaiter, what string) {
	t.Helper()
	began := time.Now()
	for try := 1; ; try++ {
		if err := push(fmt.Sprintf("sync %s %d", what, try)); err != nil {
			t.Fatalf("sync push %s: %v", what, err)
		}
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := to.Await(pctx, func(m wsclient.Message) bool {
			var c chatMsg
			return wsclient.IsEvent(topic, "new_msg")(m) && json.Unmarshal(m.Payload, &c) == nil && strings.HasPrefix(c.Body, "sync "+what)
		})
		cancel()
		if err == nil {
			t.Logf("%s: live after %d probe(s), %v", what, try, time.Since(began).Round(time.Millisecond))
			return
		}
		if time.Since(began) > 10*time.Second {
			t.Fatalf("%s: no sync message through after %d probes", what, try)
		}
	}
}

// presenceView merges the presence_state and presence_diff events of
// topic queued in a, in order, as the JavaScript Presence class does
// (syncState, applyDiff of presence_test.go), until the view holds exactly
// the keys want with one meta each, or the deadline.
func presenceView(ctx context.Context, a awaiter, topic string, want []string) (presenceMap, error) {
	var view presenceMap
	var queued []presenceDiff
	ok := func() bool {
		if view == nil || len(view) != len(want) {
			return false
		}
		for _, k := range want {
			if len(view[k]) != 1 {
				return false
			}
		}
		return true
	}
	for !ok() {
		m, err := a.Await(ctx, func(m wsclient.Message) bool {
			return m.Err == nil && m.Topic == topic && (m.Event == "presence_state" || m.Event == "presence_diff")
		})
		if err != nil {
			return view, err
		}
		if m.Event == "presence_state" {
			var p presenceMap
			if err := json.Unmarshal(m.Payload, &p); err != nil {
				return view, err
			}
			if view == nil {
				view = presenceMap{}
			}
			syncState(view, p)
			for _, d := range queued {
				applyDiff(view, d)
			}
			queued = nil
			continue
		}
		var d presenceDiff
		if err := json.Unmarshal(m.Payload, &d); err != nil {
			return view, err
		}
		if view == nil {
			queued = append(queued, d)
		} else {
			applyDiff(view, d)
		}
	}
	return view, nil
}

func TestLongPollBehindRoundRobin(t *testing.T) {
	cl := harness.Start(t, harness.Options{Nodes: 2})
	testLongPollBehindRoundRobin(t, cl, cl.StartLoadBalancer(harness.LBOptions{}))
}

// testLongPollBehindRoundRobin: a long-poll client behind a round-robin
// load balancer in front of a two-node cluster and a WebSocket on the node
// that does not own its session chat, each way, once each and in order;
// both see the merged presence; the requests alternate between the nodes;
// the session is never lost.
func testLongPollBehindRoundRobin(t *testing.T, cl *harness.Cluster, lb *harness.LoadBalancer) {
	ctx := timeout(t, 2*time.Minute)
	const topic = "room:lp-rr"
	const n = 50

	lp := openLP(ctx, t, lb.LongPollURL(), lpclient.Options{Params: map[string]string{"user": "lp"}, Reconnect: true})
	owner := ownerOf(t, lp)
	other := 3 - owner
	// The WebSocket goes straight to the node that does not own the
	// session, so every message crosses Redis, and so do half the
	// long-poll requests (relayed to the owner).
	ws := cl.Dial(ctx, other, map[string]string{"user": "ws"})
	t.Logf("long-poll session on node%d, WebSocket on node%d", owner, other)

	r, err := lp.Join(ctx, topic, map[string]string{"user": "lp"})
	if err != nil || r.Status != "ok" {
		t.Fatalf("long-poll join: %v %v", r, err)
	}
	join(ctx, t, ws, topic)
	lpPush := func(body string) error {
		_, err := lp.Push(topic, "new_msg", map[string]string{"body": body})
		return err
	}
	wsPush := func(body string) error {
		_, err := ws.Push(topic, "new_msg", map[string]string{"body": body})
		return err
	}
	awaitChatSync(ctx, t, topic, wsPush, lp, "ws->lp")
	awaitChatSync(ctx, t, topic, lpPush, ws, "lp->ws")

	// N numbered messages each way, sent interleaved.
	var lpRefs, wsRefs []string
	for i := 1; i <= n; i++ {
		ref, err := lp.Push(topic, "new_msg", map[string]string{"body": fmt.Sprintf("lp %d", i)})
		if err != nil {
			t.Fatal(err)
		}
		lpRefs = append(lpRefs, ref)
		wsRefs = append(wsRefs, push(t, ws, topic, "new_msg", map[string]string{"body": fmt.Sprintf("ws %d", i)}))
	}
	for _, ref := range lpRefs {
		if r, err := lp.AwaitReply(ctx, ref); err != nil || r.Status != "ok" {
			t.Fatalf("long-poll new_msg reply %s: %v %v", ref, r, err)
		}
	}
	awaitReplies(ctx, t, ws, wsRefs)

	for who, a := range map[string]awaiter{"long-poll client": lp, "WebSocket client": ws} {
		got := collectChat(ctx, t, who, a, topic, 2*n)
		per := map[string][]string{}
		for _, m := range got {
			per[m.User] = append(per[m.User], m.Body)
		}
		for _, user := range []string{"lp", "ws"} {
			want := make([]string, n)
			for i := range want {
				want[i] = fmt.Sprintf("%s %d", user, i+1)
			}
			if !slices.Equal(per[user], want) {
				t.Errorf("%s: %s's messages %v, want %s 1..%d once each in order", who, user, per[user], user, n)
			}
		}
		if len(per) != 2 {
			t.Errorf("%s: messages from %v", who, slices.Collect(maps.Keys(per)))
		}
	}
	// Nothing more arrives (a duplicate would).
	qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	for who, a := range map[string]awaiter{"long-poll client": lp, "WebSocket client": ws} {
		if m, err := a.Await(qctx, func(m wsclient.Message) bool {
			var c chatMsg
			return wsclient.IsEvent(topic, "new_msg")(m) && json.Unmarshal(m.Payload, &c) == nil && !strings.HasPrefix(c.Body, "sync")
		}); err == nil {
			t.Errorf("%s: extra message %s", who, m)
		}
	}
	cancel()

	for who, a := range map[string]awaiter{"long-poll client": lp, "WebSocket client": ws} {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		view, err := presenceView(pctx, a, topic, []string{"lp", "ws"})
		cancel()
		if err != nil {
			t.Errorf("%s: merged presence %v, want lp and ws once each: %v", who, view, err)
		}
	}

	// Round robin. The LB balances every request on its own, and only
	// this client's requests go through it, so in the order HAProxy
	// received them they alternate between the two nodes. The client
	// records them in the order it started them, which is HAProxy's except
	// for a POST and a poll started almost together on two connections,
	// so the whole record is only checked for balance. A quiet phase then
	// checks strict alternation: the WebSocket publishes one message at a
	// time and waits until the long-poll client has it, so the client only
	// polls, one GET after the other.
	if err := lp.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	quietFrom := len(lp.Requests())
	const quiet = 20
	for i := 1; i <= quiet; i++ {
		body := fmt.Sprintf("quiet %d", i)
		push(t, ws, topic, "new_msg", map[string]string{"body": body})
		if _, err := lp.Await(ctx, func(m wsclient.Message) bool {
			var c chatMsg
			return wsclient.IsEvent(topic, "new_msg")(m) && json.Unmarshal(m.Payload, &c) == nil && c.Body == body
		}); err != nil {
			t.Fatalf("long-poll client: %s: %v", body, err)
		}
	}
	reqs := lp.Requests()
	seen, inFlight := map[string]int{}, 0
	for i, rq := range reqs {
		if rq.End.IsZero() {
			inFlight++
			continue
		}
		if rq.ServedBy != "node1" && rq.ServedBy != "node2" {
			t.Errorf("request %d (%s) served by %q (err %v)", i, rq.Method, rq.ServedBy, rq.Err)
		}
		seen[rq.ServedBy]++
	}
	st := lp.Stats()
	t.Logf("long-poll client: %d requests (%d GET, %d POST, largest batch %d lines), served %v, %d in flight",
		len(reqs), st.Gets, st.Posts, st.MaxBatch, seen, inFlight)
	if seen["node1"] == 0 || seen["node2"] == 0 || max(seen["node1"]-seen["node2"], seen["node2"]-seen["node1"]) > 1+inFlight {
		t.Errorf("requests served by %v (%d in flight), want both nodes in turn", seen, inFlight)
	}
	var quietServed []string
	for i := quietFrom; i < len(reqs); i++ {
		rq := reqs[i]
		if rq.End.IsZero() {
			break
		}
		if rq.Method != http.MethodGet {
			t.Errorf("quiet phase: request %d is a %s", i, rq.Method)
		}
		quietServed = append(quietServed, rq.ServedBy)
		if i > quietFrom && (quietServed[len(quietServed)-2] == rq.ServedBy || reqs[i-1].End.After(rq.Start)) {
			t.Errorf("quiet phase: requests %d and %d both served by %s (or overlapping)", i-1, i, rq.ServedBy)
		}
	}
	t.Logf("quiet phase: %d polls served by %v", len(quietServed), quietServed)
	// The first message may be delivered by the poll in flight before.
	if len(quietServed) < quiet-1 {
		t.Errorf("quiet phase: %d polls for %d messages", len(quietServed), quiet)
	}
	if lp.Reconnects() != 0 || len(lp.Losses()) != 0 {
		t.Errorf("the session was lost: %d reconnects, %v", lp.Reconnects(), lp.Losses())
	}
}

// lpMember is one long-poll client of TestLongPollNodeKilled.
type lpMember struct {
	name  string
	c     *lpclient.Client
	owner int
}

func TestLongPollNodeKilled(t *testing.T) {
	cl := harness.Start(t, harness.Options{Nodes: 3})
	testLongPollNodeKilled(t, cl, cl.StartLoadBalancer(harness.LBOptions{}))
}

// testLongPollNodeKilled: nine long-poll clients behind the load balancer
// in front of three nodes follow a room; the node owning the fewest
// sessions is killed with SIGKILL while every client waits in a poll. Its
// clients' sessions are lost: each opens a new one and rejoins. The other
// clients keep theirs and get every broadcast published afterwards, once
// and in order; a client whose poll the killed node was relaying may
// reconnect instead (a transport error), never lose its session (410).
// It leaves room:lp-kill to it; the killed node stays dead.
func testLongPollNodeKilled(t *testing.T, cl *harness.Cluster, lb *harness.LoadBalancer) {
	ctx := timeout(t, 3*time.Minute)
	const topic = "room:lp-kill"
	const n = 50
	const clients = 9

	var ms []*lpMember
	perNode := map[int]int{}
	for i := 1; i <= clients; i++ {
		name := fmt.Sprintf("c%d", i)
		c := openLP(ctx, t, lb.LongPollURL(), lpclient.Options{Params: map[string]string{"user": name}, Reconnect: true})
		m := &lpMember{name: name, c: c, owner: ownerOf(t, c)}
		if r, err := c.Join(ctx, topic, nil); err != nil || r.Status != "ok" {
			t.Fatalf("%s: join: %v %v", name, r, err)
		}
		ms = append(ms, m)
		perNode[m.owner]++
	}
	// The victim is the node owning the fewest sessions (at least one),
	// so that most clients' sessions survive it.
	victim := 0
	for i := 1; i <= 3; i++ {
		if perNode[i] > 0 && (victim == 0 || perNode[i] < perNode[victim]) {
			victim = i
		}
	}
	if perNode[victim] == clients {
		t.Fatalf("every session on node%d: %v", victim, perNode)
	}
	survivor := 1
	for survivor == victim {
		survivor++
	}
	t.Logf("sessions per node %v; killing node%d, publishing on node%d", perNode, victim, survivor)

	// Every client receives broadcasts from the publishing node.
	probeAll := func(phase string, who []*lpMember, limit time.Duration) {
		t.Helper()
		began := time.Now()
		pending := slices.Clone(who)
		for try := 1; len(pending) > 0; try++ {
			if err := cl.Broadcast(ctx, survivor, topic, "broadcast", numbered{N: try, Phase: phase}); err != nil {
				t.Logf("probe %d: %v", try, err)
			}
			pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			pending = slices.DeleteFunc(pending, func(m *lpMember) bool {
				_, err := m.c.Await(pctx, isPhase(topic, "broadcast", phase))
				return err == nil
			})
			cancel()
			if len(pending) > 0 && time.Since(began) > limit {
				var names []string
				for _, m := range pending {
					names = append(names, fmt.Sprintf("%s (reconnects %d, losses %v)", m.name, m.c.Reconnects(), m.c.Losses()))
				}
				t.Fatalf("phase %s: no broadcast reached %v after %d probes in %v", phase, names, try, time.Since(began).Round(time.Millisecond))
			}
		}
		t.Logf("phase %s: every client reached in %v", phase, time.Since(began).Round(time.Millisecond))
	}
	probeAll("sync", ms, 15*time.Second)
	for _, m := range ms {
		if m.c.Reconnects() != 0 || len(m.c.Losses()) != 0 {
			t.Fatalf("%s lost its session before the kill: %v", m.name, m.c.Losses())
		}
	}

	// Kill when every client is waiting in a poll, as idle clients do:
	// each one's latest request is a GET started 500 ms ago at least.
	quietBy := time.Now().Add(10 * time.Second)
	for {
		waiting := 0
		for _, m := range ms {
			reqs := m.c.Requests()
			if last := reqs[len(reqs)-1]; last.Method == http.MethodGet && last.End.IsZero() && time.Since(last.Start) > 500*time.Millisecond {
				waiting++
			}
		}
		if waiting == len(ms) {
			break
		}
		if time.Now().After(quietBy) {
			t.Fatalf("only %d of %d clients waiting in a poll after 10 s", waiting, len(ms))
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	killed := time.Now() // cl.Kill returns once the node has exited, some 100 ms later
	cl.Kill(victim)
	for i := 1; i <= n; i++ {
		if err := cl.Broadcast(ctx, survivor, topic, "broadcast", numbered{N: i, Phase: "after"}); err != nil {
			t.Fatalf("broadcast %d after the kill: %v", i, err)
		}
	}
	if err := cl.Broadcast(ctx, survivor, topic, "broadcast", numbered{End: true, Phase: "after"}); err != nil {
		t.Fatal(err)
	}

	// The victim's clients lose their session: the next request finds no
	// owner (410 with a new token: phoenix.js reconnects), or the one in
	// flight fails with the node. They open a new session through the LB
	// and rejoin.
	var victims, survivors []*lpMember
	for _, m := range ms {
		if m.owner == victim {
			victims = append(victims, m)
		} else {
			survivors = append(survivors, m)
		}
	}
	deadline := time.Now().Add(45 * time.Second)
	for _, m := range ms {
		// The requests in flight at the kill, for the record: those
		// served by the killed node never get an answer.
		var inFlight []string
		for _, rq := range m.c.Requests() {
			if rq.Start.Before(killed) && (rq.End.IsZero() || rq.End.After(killed)) {
				end := "still in flight when listed"
				if !rq.End.IsZero() {
					end = fmt.Sprintf("answered %v after the kill", rq.End.Sub(killed).Round(time.Millisecond))
				}
				inFlight = append(inFlight, fmt.Sprintf("%s served by %q, %s", rq.Method, rq.ServedBy, end))
			}
		}
		t.Logf("%s (node%d): in flight at the kill: %v", m.name, m.owner, inFlight)
	}
	for _, m := range victims {
		for m.c.Reconnects() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s (session on the killed node%d) did not reconnect; losses %v", m.name, victim, m.c.Losses())
			}
			time.Sleep(50 * time.Millisecond) // polling interval
		}
		if at := m.c.Losses()[0].At; at.Before(killed) {
			t.Errorf("%s lost its session %v before the kill", m.name, killed.Sub(at))
		}
		t.Logf("%s reconnected %v after the kill (%d time(s)); lost for: %v", m.name, m.c.Losses()[0].At.Sub(killed).Round(time.Millisecond), m.c.Reconnects(), m.c.Losses())
	}

	// The survivors' sessions live on: every message published after the
	// kill, once, in order. A poll that the killed node was relaying to
	// a surviving owner is retried by HAProxy on another node (the server
	// closed a reused connection without answering; the GET is
	// idempotent), so in practice no survivor notices. Were it to fail
	// instead (a 502, or no answer within PollTimeout), the client would
	// reconnect as phoenix.js does and miss what was published meanwhile:
	// allowed, as long as the cause is that transport error, never a lost
	// session (410).
	kept := 0
	var rejoined []*lpMember
	seriesBy := time.Now().Add(45 * time.Second)
	for _, m := range survivors {
		var got []int
		for {
			// A poll stuck on the killed node ends at the client's
			// PollTimeout (20 s): wait in short steps, watching for it.
			actx, cancel := context.WithTimeout(ctx, time.Second)
			msg, err := m.c.Await(actx, isPhase(topic, "broadcast", "after"))
			cancel()
			if err != nil && m.c.Reconnects() > 0 {
				break // judged below
			}
			if err != nil && time.Now().Before(seriesBy) {
				continue
			}
			if err != nil {
				t.Fatalf("%s: awaiting the series after %d message(s): %v (losses %v)", m.name, len(got), err, m.c.Losses())
			}
			var p numbered
			if err := json.Unmarshal(msg.Payload, &p); err != nil {
				t.Fatalf("%s: %s: %v", m.name, msg, err)
			}
			if p.End {
				break
			}
			got = append(got, p.N)
			if m.c.Reconnects() > 0 {
				break // judged below
			}
		}
		if m.c.Reconnects() == 0 {
			kept++
			want := make([]int, n)
			for i := range want {
				want[i] = i + 1
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s (node%d) received %d message(s) after the kill, want 1..%d once each in order: %s", m.name, m.owner, len(got), n, summarize(got))
			}
			continue
		}
		rejoined = append(rejoined, m)
		for _, l := range m.c.Losses() {
			if errors.Is(l.Err, lpclient.ErrSessionGone) {
				t.Errorf("%s (session on the surviving node%d) lost its session: %v", m.name, m.owner, l.Err)
			}
		}
		t.Logf("%s (node%d): its request in flight failed with the killed node, reconnected: %v", m.name, m.owner, m.c.Losses())
	}
	if kept == 0 {
		t.Errorf("no client on a surviving node kept its session (%d survivors)", len(survivors))
	}

	// Every client that reconnected has rejoined: broadcasts published
	// from now on reach it.
	probeAll("rejoined", append(slices.Clone(victims), rejoined...), 30*time.Second)
	for _, m := range ms {
		if m.owner != victim && m.c.Reconnects() == 0 && len(m.c.Losses()) != 0 {
			t.Errorf("%s: losses %v without a reconnect", m.name, m.c.Losses())
		}
		if m.owner == victim && m.c.Reconnects() < 1 {
			t.Errorf("%s: %d reconnects", m.name, m.c.Reconnects())
		}
	}
	t.Logf("%d of %d survivors kept their session, %d reconnected; %d victims reconnected", kept, len(survivors), len(rejoined), len(victims))
}
