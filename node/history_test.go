package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

// memHistory is a pubsub.History in memory, enough to test the node's
// side: one epoch, offsets from 1, Size retained per topic, and a read
// error to inject.
type memHistory struct {
	*local.PubSub
	mu      sync.Mutex
	policy  pubsub.HistoryPolicy         // guarded by mu
	set     int                          // SetHistoryPolicy calls; guarded by mu
	top     map[string]uint64            // guarded by mu
	kept    map[string][]*pubsub.Message // guarded by mu
	readErr error                        // guarded by mu
}

const memEpoch = "e1"

func newMemHistory() *memHistory {
	return &memHistory{PubSub: local.New(), top: map[string]uint64{}, kept: map[string][]*pubsub.Message{}}
}

func (h *memHistory) SetHistoryPolicy(p pubsub.HistoryPolicy) {
	h.mu.Lock()
	h.policy, h.set = p, h.set+1
	h.mu.Unlock()
}

func (h *memHistory) HistoryOptions(topic string) pubsub.HistoryOptions {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.policy == nil {
		return pubsub.HistoryOptions{}
	}
	return h.policy(topic)
}

func (h *memHistory) Publish(ctx context.Context, m *pubsub.Message) error {
	_, err := h.PublishAt(ctx, m)
	return err
}

func (h *memHistory) PublishAt(ctx context.Context, m *pubsub.Message) (pubsub.Position, error) {
	o := h.HistoryOptions(m.Topic)
	if o.Enabled() {
		h.mu.Lock()
		h.top[m.Topic]++
		m.Pos = pubsub.Position{Epoch: memEpoch, Offset: h.top[m.Topic]}
		kept := append(h.kept[m.Topic], m)
		h.kept[m.Topic] = kept[max(0, len(kept)-o.Size):]
		h.mu.Unlock()
	}
	return m.Pos, h.PubSub.Publish(ctx, m)
}

func (h *memHistory) ReadHistory(_ context.Context, topic string, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	res := pubsub.HistoryResult{Top: pubsub.Position{Epoch: memEpoch, Offset: h.top[topic]}}
	kept := h.kept[topic]
	switch {
	case h.readErr != nil:
		return pubsub.HistoryResult{}, h.readErr
	case h.policy == nil || !h.policy(topic).Enabled():
		return res, pubsub.ErrNoHistory
	case q.Since.IsZero():
		res.Messages = kept[max(0, len(kept)-q.Last):]
		return res, nil
	case q.Since.Epoch != memEpoch:
		return res, pubsub.ErrEpochChanged
	case q.Since.Offset > res.Top.Offset:
		return res, pubsub.ErrPositionAhead
	case len(kept) > 0 && q.Since.Offset+1 < kept[0].Pos.Offset:
		return res, pubsub.ErrPositionTooOld
	}
	for _, m := range kept {
		if m.Pos.Offset > q.Since.Offset && (q.Limit == 0 || len(res.Messages) < q.Limit) {
			res.Messages = append(res.Messages, m)
		}
	}
	return res, nil
}

// plainPubSub hides every interface of its PubSub but PubSub's own.
type plainPubSub struct{ pubsub.PubSub }

var historyRules = []pubsub.HistoryRule{
	{Pattern: "room:*", HistoryOptions: pubsub.HistoryOptions{Size: 3}},
	{Pattern: "lobby", HistoryOptions: pubsub.HistoryOptions{Size: 100}},
}

// History needs a PubSub that keeps it: a start without one fails, rather
// than clients being told of positions nobody keeps.
func TestHistoryNeedsAHistoryPubSub(t *testing.T) {
	cfg := Config{Router: &channels.Router{}, PubSub: plainPubSub{local.New()}, History: historyRules}
	n, err := New(cfg)
	if err == nil {
		_ = n.Shutdown(context.Background())
		t.Fatal("New took history rules with a PubSub that keeps no history")
	}
	if !strings.Contains(err.Error(), "node: history needs a PubSub that keeps history") {
		t.Fatalf("error %q does not say what is missing", err)
	}
	// A route's history wants one as much.
	cfg.History = nil
	cfg.Router = (&channels.Router{}).History("room:*", pubsub.HistoryOptions{Size: 5})
	if n, err = New(cfg); err == nil {
		_ = n.Shutdown(context.Background())
		t.Fatal("New took a route with history and a PubSub that keeps no history")
	}
	cfg.Router = &channels.Router{}
	newTestNode(t, cfg) // without history any PubSub will do
}

// The History rules come before the application's History routes, which
// give history to the topics no rule matches.
func TestHistoryRulesBeforeRoutes(t *testing.T) {
	h := newMemHistory()
	r := (&channels.Router{}).History("room:*", pubsub.HistoryOptions{Size: 7}).History("vip:*", pubsub.HistoryOptions{Size: 9})
	n, err := New(Config{Router: r, PubSub: h, History: historyRules, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown(context.Background()) })
	for topic, want := range map[string]int{"room:1": 3, "vip:1": 9, "lobby": 100, "other": 0, "phx:nodes": 0} {
		if got := h.HistoryOptions(topic).Size; got != want {
			t.Errorf("%s keeps %d, want %d", topic, got, want)
		}
	}
}

func TestHistoryPolicyFromRules(t *testing.T) {
	h := newMemHistory()
	newTestNode(t, Config{PubSub: h, History: historyRules})
	for topic, want := range map[string]int{"room:1": 3, "lobby": 100, "lobby:x": 0, "other": 0} {
		if got := h.HistoryOptions(topic).Size; got != want {
			t.Errorf("%s keeps %d, want %d", topic, got, want)
		}
	}

	// Without rules the PubSub's policy is left alone: topics cost what
	// they cost without history.
	h2 := newMemHistory()
	newTestNode(t, Config{PubSub: h2})
	h2.mu.Lock()
	defer h2.mu.Unlock()
	if h2.set != 0 {
		t.Errorf("SetHistoryPolicy called %d times without any history", h2.set)
	}
}

func TestBroadcastAPIAnswersPositions(t *testing.T) {
	h := newMemHistory()
	n := newTestNode(t, Config{PubSub: h, History: historyRules})
	rec := &recorder{}
	_ = h.Subscribe("room:1", rec)
	for i, want := range []string{"e1:1", "e1:2"} {
		code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"room:1","event":"new_msg","payload":{"n":1}}`)
		var ans map[string]string
		if err := json.Unmarshal([]byte(body), &ans); err != nil || code != http.StatusAccepted || ans["position"] != want {
			t.Fatalf("broadcast %d: status %d body %s; want 202 with position %s", i, code, body, want)
		}
	}
	rec.mu.Lock()
	if len(rec.msgs) != 2 || rec.msgs[1].Pos.String() != "e1:2" {
		t.Errorf("subscriber got %d messages, last at %v", len(rec.msgs), rec.msgs[len(rec.msgs)-1].Pos)
	}
	rec.mu.Unlock()
	// A topic without history answers as before: no position.
	code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"other","event":"e"}`)
	if code != http.StatusAccepted || strings.Contains(body, "position") {
		t.Fatalf("topic without history: status %d body %s; want 202 without position", code, body)
	}
}

type historyReply struct {
	Topic     string `json:"topic"`
	Position  string `json:"position"`
	Recovered *bool  `json:"recovered"`
	Reason    string `json:"reason"`
	Messages  []struct {
		Position string          `json:"position"`
		Event    string          `json:"event"`
		Payload  json.RawMessage `json:"payload"`
		Binary   bool            `json:"binary"`
	} `json:"messages"`
}

func (r historyReply) positions() string {
	var p []string
	for _, m := range r.Messages {
		p = append(p, m.Position)
	}
	return strings.Join(p, " ")
}

func getHistory(t *testing.T, n *Node, query string, header ...string) (int, historyReply, string) {
	t.Helper()
	code, body := do(t, n.Handler(), "GET", "/api/history?"+query, "", header...)
	var r historyReply
	if code == http.StatusOK {
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("%s: %v in %s", query, err, body)
		}
		if r.Messages == nil {
			t.Fatalf("%s: messages is not an array: %s", query, body)
		}
	}
	return code, r, body
}

func TestHistoryAPI(t *testing.T) {
	h := newMemHistory()
	n := newTestNode(t, Config{PubSub: h, History: historyRules, APIKey: "k"})
	key := []string{"Authorization", "Bearer k"}
	for _, p := range []string{`{"n":1}`, `{"n":2}`, `{"n":3}`, `{"n":4}`} {
		if code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"room:1","event":"new_msg","payload":`+p+`}`, key...); code != 202 {
			t.Fatalf("broadcast: %d %s", code, body)
		}
	}
	if _, err := h.PublishAt(context.Background(), &pubsub.Message{Topic: "lobby", Event: "blob", Payload: []byte{0, 1, 0xff}, Binary: true}); err != nil {
		t.Fatal(err)
	}

	if code, _, _ := getHistory(t, n, "topic=room:1"); code != http.StatusUnauthorized {
		t.Fatalf("without the key: status %d, want 401", code)
	}

	// room:* keeps 3: offsets 2..4 remain.
	cases := []struct {
		query, positions, reason string
		recovered                *bool
	}{
		{query: "topic=room:1", positions: "e1:2 e1:3 e1:4"},
		{query: "topic=room:1&last=2", positions: "e1:3 e1:4"},
		{query: "topic=room:1&last=1000", positions: "e1:2 e1:3 e1:4"},
		{query: "topic=room:1&since=e1:2", positions: "e1:3 e1:4", recovered: ptr(true)},
		{query: "topic=room:1&since=e1:1&limit=1", positions: "e1:2", recovered: ptr(true)},
		{query: "topic=room:1&since=e1:4", positions: "", recovered: ptr(true)},
		{query: "topic=room:2&since=e1:0", positions: "", recovered: ptr(true)},
		{query: "topic=room:1&since=e1:0", reason: "position too old", recovered: ptr(false)},
		{query: "topic=room:1&since=e0:3", reason: "epoch changed", recovered: ptr(false)},
		{query: "topic=room:1&since=e1:5", reason: "position ahead", recovered: ptr(false)},
	}
	for _, c := range cases {
		code, r, body := getHistory(t, n, c.query, key...)
		top := "e1:4"
		if strings.Contains(c.query, "room:2") {
			top = "e1:0"
		}
		switch {
		case code != http.StatusOK:
			t.Errorf("%s: status %d %s", c.query, code, body)
		case r.positions() != c.positions || r.Reason != c.reason || r.Position != top || r.Topic == "":
			t.Errorf("%s: %s; want positions %q, reason %q, position %s", c.query, body, c.positions, c.reason, top)
		case (r.Recovered == nil) != (c.recovered == nil) || r.Recovered != nil && *r.Recovered != *c.recovered:
			t.Errorf("%s: %s; want recovered %v", c.query, body, c.recovered)
		}
	}
	_, r, _ := getHistory(t, n, "topic=room:1&last=1", key...)
	if m := r.Messages[0]; m.Event != "new_msg" || string(m.Payload) != `{"n":4}` || m.Binary {
		t.Errorf("message %+v, want new_msg {\"n\":4} as JSON", m)
	}
	// A binary payload travels as base64, marked.
	_, r, body := getHistory(t, n, "topic=lobby", key...)
	if len(r.Messages) != 1 || !r.Messages[0].Binary || string(r.Messages[0].Payload) != `"AAH/"` {
		t.Errorf("binary message: %s", body)
	}

	for _, c := range []struct {
		query   string
		status  int
		errPart string
	}{
		{"", 400, `"topic" is required`},
		{"topic=other", 404, "topic has no history"},
		{"topic=phx:socket:u1", 400, "reserved"},
		{"topic=room:1&since=nope", 400, "malformed history position"},
		{"topic=room:1&since=e1:-1", 400, "malformed history position"},
		{"topic=room:1&last=0", 400, `"last" must be a positive integer`},
		{"topic=room:1&last=x", 400, `"last" must be a positive integer`},
		{"topic=room:1&since=e1:1&limit=-2", 400, `"limit" must be a positive integer`},
		{"topic=room:1&limit=2", 400, `"limit" goes with "since"`},
		{"topic=room:1&since=e1:1&last=2", 400, "exclude each other"},
		{"topic=room:1&topic=room:2", 400, "more than once"},
		{"topic=room:1&offset=2", 400, "unknown parameter"},
	} {
		code, body := do(t, n.Handler(), "GET", "/api/history?"+c.query, "", key...)
		var e struct{ Error string }
		_ = json.Unmarshal([]byte(body), &e)
		if code != c.status || !strings.Contains(e.Error, c.errPart) {
			t.Errorf("%q: status %d body %s; want %d with a JSON error containing %q", c.query, code, body, c.status, c.errPart)
		}
	}

	// A store that cannot be read is an outage, worth retrying.
	h.mu.Lock()
	h.readErr = errors.New("redis: connection refused")
	h.mu.Unlock()
	if code, body := do(t, n.Handler(), "GET", "/api/history?topic=room:1", "", key...); code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("store down: status %d body %s; want 503 naming the cause", code, body)
	}
}

func ptr[T any](v T) *T { return &v }

// The in-memory PubSub's history, end to end through the API: what POST
// /api/broadcast placed, GET /api/history finds at that position.
func TestHistoryAPIWithLocalPubSub(t *testing.T) {
	n := newTestNode(t, Config{PubSub: local.New(), History: historyRules})
	var positions []string
	for _, p := range []string{`{"n":1}`, `{"n":2}`} {
		code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"room:a","event":"new_msg","payload":`+p+`}`)
		var ans map[string]string
		if err := json.Unmarshal([]byte(body), &ans); err != nil || code != http.StatusAccepted || ans["position"] == "" {
			t.Fatalf("broadcast: status %d body %s; want 202 with a position", code, body)
		}
		positions = append(positions, ans["position"])
	}
	code, r, body := getHistory(t, n, "topic=room:a&since="+positions[0])
	if code != http.StatusOK || r.positions() != positions[1] || r.Position != positions[1] || string(r.Messages[0].Payload) != `{"n":2}` {
		t.Fatalf("since %s: %d %s; want the second broadcast, at %s", positions[0], code, body, positions[1])
	}
	code, r, body = getHistory(t, n, "topic=room:a")
	if code != http.StatusOK || r.positions() != strings.Join(positions, " ") || r.Recovered != nil {
		t.Fatalf("last: %d %s; want both broadcasts", code, body)
	}
}

func TestHistoryPolicyRulesBeforeRoutesNeverInternal(t *testing.T) {
	rules, err := pubsub.ParseHistoryRules("room:quiet=0;room:big=500,1m;*=7")
	if err != nil {
		t.Fatal(err)
	}
	routes := (&channels.Router{}).History("room:*", pubsub.HistoryOptions{Size: 100}).HistoryPolicy(nil)
	policy := historyPolicy(rules, routes)
	for topic, want := range map[string]pubsub.HistoryOptions{
		"room:quiet":     {},                            // a rule of size 0 turns the route off
		"room:big":       {Size: 500, TTL: time.Minute}, // a rule overrides the route
		"room:lobby":     {Size: 7},                     // the first matching rule wins, before routes
		"phx:nodes":      {},                            // the node's own topics never keep history
		"phx:socket:abc": {},
		dashboardTopic:   {},
	} {
		if got := policy(topic); got != want {
			t.Errorf("policy(%q) = %+v, want %+v", topic, got, want)
		}
	}
	if historyPolicy(nil, nil) != nil {
		t.Error("no rules and no routes must leave the PubSub without a policy")
	}
	if got := historyPolicy(nil, routes)("room:x"); got != (pubsub.HistoryOptions{Size: 100}) {
		t.Errorf("routes alone: %+v", got)
	}
}
