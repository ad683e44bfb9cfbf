package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
)

// Pinger is implemented by a PubSub or Tracker that depends on a server
// (Redis); /readyz reports not-ready while Ping fails.
type Pinger interface {
	Ping(ctx context.Context) error
}

func (n *Node) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

func (n *Node) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if n.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "draining\n")
		return
	}
	// A clustered node that has not yet heard what the other nodes read
	// would send history broadcasts without their position (redis.Gate).
	if _, ok := n.cfg.PubSub.(gateTaker); ok && (!n.gated.Load() || !n.cluster.gate.Settled(time.Now())) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready: waiting for the other nodes' reports\n")
		return
	}
	for _, dep := range []any{n.cfg.PubSub, n.cfg.Presence} {
		p, ok := dep.(Pinger)
		if !ok {
			continue
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		err := p.Ping(ctx)
		cancel()
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
	}
	_, _ = io.WriteString(w, "ready\n")
}

type broadcastRequest struct {
	Topic   string          `json:"topic"`
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload"`
}

// apiBroadcast publishes {"topic","event","payload"} to every subscriber
// of the topic on every node. 202: accepted for delivery, which is
// at-most-once like every broadcast; with the broadcast's "position" when
// the topic keeps history, from which clients recover what they missed.
func (n *Node) apiBroadcast(w http.ResponseWriter, r *http.Request) {
	var req broadcastRequest
	if !n.decodeBody(w, r, &req) {
		return
	}
	switch {
	case req.Topic == "" || req.Event == "":
		writeJSONError(w, http.StatusBadRequest, `"topic" and "event" are required strings`)
		return
	case channels.ReservedTopic(req.Topic):
		writeJSONError(w, http.StatusBadRequest, "topic is reserved")
		return
	case reservedEvent(req.Event):
		writeJSONError(w, http.StatusBadRequest, `event is reserved for the protocol ("phx_*", "presence_state", "presence_diff")`)
		return
	}
	payload := req.Payload
	if len(payload) == 0 || string(payload) == "null" {
		payload = json.RawMessage("{}")
	}
	if payload[0] != '{' {
		writeJSONError(w, http.StatusBadRequest, `"payload" must be a JSON object`)
		return
	}
	// encoding/json keeps a RawMessage's bytes, invalid UTF-8 included,
	// which would close every browser subscriber (RFC 6455 §8.1).
	if err := channels.ValidatePayload(payload); err != nil {
		writeJSONError(w, http.StatusBadRequest, `"payload": `+err.Error())
		return
	}
	pos, err := n.broadcast(r, req.Topic, req.Event, payload)
	if err != nil {
		if errors.Is(err, pubsub.ErrTooLarge) {
			// Above --redis-max-message-size: retrying will not help.
			writeJSONError(w, http.StatusRequestEntityTooLarge, "broadcast refused: "+err.Error())
			return
		}
		n.log.Warn("node: api broadcast failed", "topic", req.Topic, "err", err)
		writeJSONError(w, http.StatusServiceUnavailable, "broadcast failed: "+err.Error())
		return
	}
	ans := map[string]string{"status": "accepted"}
	if !pos.IsZero() {
		// Its place in the topic's history (PROTOCOL.md §12.9); still 202:
		// live delivery is as before, and callers that check for 202 go on.
		ans["position"] = pos.String()
	}
	writeJSON(w, http.StatusAccepted, ans)
}

// apiDisconnect closes every socket with the given id.
func (n *Node) apiDisconnect(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID string `json:"id"`
	}
	if !n.decodeBody(w, r, &req) {
		return
	}
	if req.ID == "" {
		writeJSONError(w, http.StatusBadRequest, `"id" is required`)
		return
	}
	if err := n.endpoint.Disconnect(r.Context(), req.ID); err != nil {
		writeJSONError(w, http.StatusServiceUnavailable, "disconnect failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
}

// reservedEvent reports whether clients read event as the protocol's
// own: replies, errors and closes of their joins, and presence, which a
// client library merges into its presence list (fake users, or real ones
// made to leave).
func reservedEvent(event string) bool {
	return strings.HasPrefix(event, "phx_") ||
		event == channels.EventPresenceState || event == channels.EventPresenceDiff
}

// decodeBody decodes the request's JSON body into v; the route has
// checked its Content-Type (requireJSON).
func (n *Node) decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, n.cfg.MaxFrameSize)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSONError(w, http.StatusRequestEntityTooLarge, "body too large")
			return false
		}
		writeJSONError(w, http.StatusBadRequest, "malformed JSON body: "+err.Error())
		return false
	}
	if dec.More() {
		writeJSONError(w, http.StatusBadRequest, "malformed JSON body: trailing data")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
