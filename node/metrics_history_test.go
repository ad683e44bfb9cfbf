package node

import (
	"net/http"
	"testing"

	"github.com/channelsd/channelsd/pubsub/local"
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
		if code, body := do(t, n.Handler(), "POST", "/api/broadcast", `{"topic":"`+topic+`","event":"e"}`); code != http.StatusOK && code != http.StatusAccepted {
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
