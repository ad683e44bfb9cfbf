package node

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// The history gauges read the PubSub's own count at scrape time.
func TestMetricsHistoryHeld(t *testing.T) {
	n := newTestNode(t, Config{PubSub: local.New(), History: historyRules})
	fams, _ := scrape(t, n.Handler())
	if got := value(fams, "channelsd_history_topics"); got != 0 {
		t.Errorf("before any broadcast: channelsd_history_topics = %v, want 0", got)
	}
	// room:* keeps 3 of its 5, lobby its 1; "other" keeps none.
	for _, topic := range []string{"room:1", "room:1", "room:1", "room:1", "room:1", "lobby", "other"} {
		if code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"`+topic+`","event":"e"}`); code != http.StatusAccepted {
			t.Fatalf("broadcast: %d %s", code, body)
		}
	}
	fams, _ = scrape(t, n.Handler())
	if got := value(fams, "channelsd_history_topics"); got != 2 {
		t.Errorf("channelsd_history_topics = %v, want 2", got)
	}
	if got := value(fams, "channelsd_history_retained_messages"); got != 4 {
		t.Errorf("channelsd_history_retained_messages = %v, want 4", got)
	}

	// A PubSub that cannot count exposes no such gauge.
	plain := newTestNode(t, Config{PubSub: plainPubSub{local.New()}})
	fams, _ = scrape(t, plain.Handler())
	for _, name := range []string{"channelsd_history_topics", "channelsd_history_retained_messages"} {
		if _, ok := fams[name]; ok {
			t.Errorf("%s exposed for a PubSub that keeps no history", name)
		}
	}
}

// Recoveries are counted by result and reason, replays by message,
// read from the endpoint's counters at scrape time.
func TestMetricsHistoryRecoveries(t *testing.T) {
	r := echoRouter().History("room:*", pubsub.HistoryOptions{Size: 10})
	n := startListening(t, Config{Router: r, PubSub: local.New()})
	fams, _ := scrape(t, n.Handler())
	for _, reason := range []string{"epoch changed", "position too old", "position ahead", "invalid position", "no history", "history unavailable"} {
		if got := value(fams, "channelsd_history_recoveries_total", "result", "incomplete", "reason", reason); got != 0 {
			t.Errorf("before any join: incomplete %q = %v, want a series at 0", reason, got)
		}
	}

	var first string
	for i := range 3 {
		code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"room:1","event":"e","payload":{"i":`+strconv.Itoa(i)+`}}`)
		var ans map[string]string
		if err := json.Unmarshal([]byte(body), &ans); err != nil || code != http.StatusAccepted || ans["position"] == "" {
			t.Fatalf("broadcast: %d %s", code, body)
		}
		if i == 0 {
			first = ans["position"]
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	join := func(topic string, params any) wsclient.Message {
		t.Helper()
		c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		reply, err := c.Join(ctx, topic, params)
		if err != nil || reply.Status != "ok" {
			t.Fatalf("join %v: %v %v", params, reply, err)
		}
		return reply
	}
	join("room:1", map[string]any{"since": first})          // complete: 2 replayed
	join("room:1", map[string]any{"since": "nope"})         // incomplete: invalid position
	join("room:1", map[string]any{"since": "otherepoch:1"}) // incomplete: epoch changed
	join("room:1", map[string]any{"history": 2})            // 2 replayed, no recovery asked

	fams, _ = scrape(t, n.Handler())
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"channelsd_history_recoveries_total", []string{"result", "complete"}, 1},
		{"channelsd_history_recoveries_total", []string{"result", "incomplete", "reason", "invalid position"}, 1},
		{"channelsd_history_recoveries_total", []string{"result", "incomplete", "reason", "epoch changed"}, 1},
		{"channelsd_history_recoveries_total", []string{"result", "incomplete", "reason", "position too old"}, 0},
		{"channelsd_history_replayed_messages_total", nil, 4},
		{"channelsd_history_gaps_total", nil, 0},
		{"channelsd_history_topics", nil, 1},
		{"channelsd_history_retained_messages", nil, 3},
	} {
		if got := value(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
