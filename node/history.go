package node

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
)

// errNoHistoryPubSub refuses a start whose routes or rules want history
// from a PubSub that cannot keep any.
var errNoHistoryPubSub = errors.New("node: history needs a PubSub that keeps history (pubsub.History); the routes or the History rules name topics with history")

// setHistoryPolicy hands the PubSub the topics that keep history
// (historyPolicy). A configuration without any leaves the PubSub as it
// is, so that topics cost what they cost without history.
func setHistoryPolicy(cfg Config) error {
	policy := historyPolicy(cfg.History, cfg.Router.HistoryPolicy(nil))
	if policy == nil {
		return nil
	}
	h, ok := cfg.PubSub.(pubsub.History)
	if !ok {
		return errNoHistoryPubSub
	}
	h.SetHistoryPolicy(policy)
	return nil
}

// historyPolicy decides a topic's history: the operator's rules first (a
// rule of size 0 turns off what a channel asked for), then the routes'
// History, and never for the node's own topics ("phx:..." and the
// dashboard's), whose messages are control traffic, not broadcasts to
// recover.
func historyPolicy(rules []pubsub.HistoryRule, routes pubsub.HistoryPolicy) pubsub.HistoryPolicy {
	policy := pubsub.RulesPolicy(rules, routes)
	if policy == nil {
		return nil
	}
	return func(topic string) pubsub.HistoryOptions {
		if channels.ReservedTopic(topic) || topic == dashboardTopic {
			return pubsub.HistoryOptions{}
		}
		return policy(topic)
	}
}

// history returns the node's PubSub as a History when topic keeps one.
func (n *Node) history(topic string) (pubsub.History, bool) {
	h, ok := n.cfg.PubSub.(pubsub.History)
	if !ok || !h.HistoryOptions(topic).Enabled() {
		return nil, false
	}
	return h, true
}

// broadcast publishes a validated JSON payload to topic, through
// PublishAt when the PubSub keeps history, so the caller learns the
// broadcast's position (zero for a topic without history).
func (n *Node) broadcast(r *http.Request, topic, event string, payload json.RawMessage) (pubsub.Position, error) {
	if h, ok := n.cfg.PubSub.(pubsub.History); ok {
		return h.PublishAt(r.Context(), &pubsub.Message{Topic: topic, Event: event, Payload: payload})
	}
	return pubsub.Position{}, n.endpoint.Broadcast(r.Context(), topic, event, payload)
}

// defaultHistoryLast is what GET /api/history returns without since or
// last.
const defaultHistoryLast = 50

type historyMessage struct {
	Position string          `json:"position"`
	Event    string          `json:"event"`
	Payload  json.RawMessage `json:"payload"`
	Binary   bool            `json:"binary,omitempty"`
}

type historyAnswer struct {
	Topic     string           `json:"topic"`
	Position  *string          `json:"position"` // null: the history could not tell
	Recovered *bool            `json:"recovered,omitempty"`
	Reason    string           `json:"reason,omitempty"`
	Messages  []historyMessage `json:"messages"`
}

// apiHistory serves GET /api/history?topic=T[&since=P[&limit=N]|&last=N]:
// the broadcasts of T after P (what a client that saw P missed), or its
// last N; README "HTTP API" documents the answers.
func (n *Node) apiHistory(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for k, v := range q {
		switch {
		case k != "topic" && k != "since" && k != "limit" && k != "last":
			writeJSONError(w, http.StatusBadRequest, "unknown parameter "+strconv.Quote(k)+" (topic, since, limit, last)")
			return
		case len(v) > 1:
			writeJSONError(w, http.StatusBadRequest, "parameter "+strconv.Quote(k)+" given more than once")
			return
		}
	}
	topic := q.Get("topic")
	switch {
	case topic == "":
		writeJSONError(w, http.StatusBadRequest, `"topic" is required`)
		return
	case channels.ReservedTopic(topic):
		writeJSONError(w, http.StatusBadRequest, "topic is reserved")
		return
	case q.Has("since") && q.Has("last"):
		writeJSONError(w, http.StatusBadRequest, `"since" and "last" exclude each other`)
		return
	case q.Has("limit") && !q.Has("since"):
		writeJSONError(w, http.StatusBadRequest, `"limit" goes with "since" ("last" without)`)
		return
	}
	h, ok := n.history(topic)
	if !ok {
		writeJSONError(w, http.StatusNotFound, "topic has no history")
		return
	}
	size := h.HistoryOptions(topic).Size
	var hq pubsub.HistoryQuery
	if q.Has("since") {
		since, err := pubsub.ParsePosition(q.Get("since"))
		if err != nil {
			writeJSONError(w, http.StatusBadRequest, `"since": `+err.Error())
			return
		}
		hq.Since = since
		hq.Limit = size
		if q.Has("limit") {
			if hq.Limit, ok = positiveParam(w, q.Get("limit"), "limit"); !ok {
				return
			}
		}
		hq.Limit = min(hq.Limit, size)
	} else {
		hq.Last = defaultHistoryLast
		if q.Has("last") {
			if hq.Last, ok = positiveParam(w, q.Get("last"), "last"); !ok {
				return
			}
		}
		hq.Last = min(hq.Last, size)
	}
	res, err := h.ReadHistory(r.Context(), topic, hq)
	ans := historyAnswer{Topic: topic, Messages: []historyMessage{}}
	if top := res.Top.String(); top != "" {
		ans.Position = &top
	}
	switch reason := channels.RecoveryReason(err); {
	case errors.Is(err, pubsub.ErrNoHistory):
		writeJSONError(w, http.StatusNotFound, "topic has no history")
		return
	case reason != "":
		ans.Recovered, ans.Reason = new(bool), reason
		writeJSON(w, http.StatusOK, ans)
		return
	case err != nil:
		n.log.Warn("node: api history failed", "topic", topic, "err", err)
		writeJSONError(w, http.StatusServiceUnavailable, "history unavailable: "+err.Error())
		return
	}
	if !hq.Since.IsZero() {
		recovered := true
		ans.Recovered = &recovered
	}
	for _, m := range res.Messages {
		hm := historyMessage{Position: m.Pos.String(), Event: m.Event, Payload: m.Payload}
		switch {
		case len(m.Payload) == 0 && !m.Binary:
			hm.Payload = json.RawMessage("{}") // as a broadcast without payload goes out
		case m.Binary:
			b64, _ := json.Marshal(m.Payload) // []byte marshals as base64
			hm.Payload, hm.Binary = b64, true
		}
		ans.Messages = append(ans.Messages, hm)
	}
	writeJSON(w, http.StatusOK, ans)
}

// positiveParam parses a count parameter, answering 400 for anything but
// a positive decimal integer.
func positiveParam(w http.ResponseWriter, v, name string) (int, bool) {
	x, err := strconv.Atoi(v)
	if err != nil || x < 1 {
		writeJSONError(w, http.StatusBadRequest, strconv.Quote(name)+" must be a positive integer")
		return 0, false
	}
	return x, true
}
