package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/channelsd/channelsd/channels"
)

// ConnectRequest is the body of a connect call.
type ConnectRequest struct {
	Params     map[string]string `json:"params"`            // the connect parameters, vsn included
	Headers    map[string]string `json:"headers,omitempty"` // the forwarded headers present in the request
	RemoteAddr string            `json:"remote_addr"`
	Transport  string            `json:"transport"`       // "websocket" or "longpoll"
	Token      string            `json:"token,omitempty"` // the bearer token of the handshake, if any
}

// ConnectAnswer is the backend's answer to a connect call.
type ConnectAnswer struct {
	Status   string          `json:"status"`    // "ok" or "error"
	SocketID string          `json:"socket_id"` // ok: names the socket ("" anonymous)
	User     string          `json:"user"`      // ok: sent with every later call
	Assigns  json.RawMessage `json:"assigns"`   // ok: a JSON object sent with every later call
	Reason   string          `json:"reason"`    // error: the refusal's body
	// HTTPStatus is the refusal's status, 400 to 499; 0 means 403.
	HTTPStatus int `json:"http_status"`
}

// JoinRequest is the body of a join call.
type JoinRequest struct {
	SocketID string          `json:"socket_id"`
	User     string          `json:"user"`
	Assigns  json.RawMessage `json:"assigns"` // {} when there are none
	Topic    string          `json:"topic"`
	Params   json.RawMessage `json:"params"` // the join parameters, {} when none
}

// EventRequest is the body of an event call, a client's push.
type EventRequest struct {
	SocketID string          `json:"socket_id"`
	User     string          `json:"user"`
	Assigns  json.RawMessage `json:"assigns"`
	Topic    string          `json:"topic"`
	Event    string          `json:"event"`
	Payload  json.RawMessage `json:"payload"`
	Ref      string          `json:"ref"` // the push's ref as the client sent it
}

// LeaveRequest is the body of a leave call, a notification whose answer
// is only checked for its HTTP status.
type LeaveRequest struct {
	SocketID string          `json:"socket_id"`
	User     string          `json:"user"`
	Assigns  json.RawMessage `json:"assigns"`
	Topic    string          `json:"topic"`
	// Reason is why the join ended: left, closed, duplicate_join, stop,
	// error, crash or history_gap.
	Reason string `json:"reason"`
}

// Answer is the backend's answer to a join or event call.
type Answer struct {
	// Status: "ok" or "error"; for an event also "noreply" (no reply: the
	// client's push times out unless it expects none).
	Status string `json:"status"`
	// Reply is the reply's payload; absent: {} for ok, {"reason": Reason}
	// for error.
	Reply  json.RawMessage `json:"reply"`
	Reason string          `json:"reason"`
	// Assigns, a JSON object, replaces the assigns sent with this join's
	// later calls; absent or null keeps them.
	Assigns json.RawMessage `json:"assigns"`
	// Broadcasts (events only) are sent to the topic's subscribers, in
	// order, before the reply.
	Broadcasts []Broadcast `json:"broadcasts"`

	event bool // set before decoding: "noreply" and broadcasts allowed
}

// Broadcast is one broadcast an event answer asks for, on the event's
// topic.
type Broadcast struct {
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload"` // absent: {}
	// ExcludeSender leaves out the join that pushed the event (Phoenix's
	// broadcast_from).
	ExcludeSender bool `json:"exclude_sender"`
}

var errNotObject = errors.New("assigns must be a JSON object")

func (a *ConnectAnswer) check() error {
	switch a.Status {
	case "ok":
		return checkObject(a.Assigns)
	case "error":
		if a.HTTPStatus != 0 && (a.HTTPStatus < 400 || a.HTTPStatus > 499) {
			return fmt.Errorf("http_status %d is not 400..499", a.HTTPStatus)
		}
		return nil
	}
	return fmt.Errorf("status %q is not ok or error", a.Status)
}

func (a *Answer) check() error {
	switch {
	case a.Status == "ok" || a.Status == "error":
	case a.Status == "noreply" && a.event:
	default:
		return fmt.Errorf("status %q is not allowed", a.Status)
	}
	if err := checkObject(a.Assigns); err != nil {
		return err
	}
	if len(a.Reply) > 0 {
		if err := channels.ValidatePayload(a.Reply); err != nil {
			return fmt.Errorf("reply: %w", err)
		}
	}
	if len(a.Broadcasts) > 0 && !a.event {
		return errors.New("broadcasts are for event answers")
	}
	for i, b := range a.Broadcasts {
		if b.Event == "" || strings.HasPrefix(b.Event, "phx_") {
			return fmt.Errorf("broadcasts[%d]: event %q is empty or reserved", i, b.Event)
		}
		if len(b.Payload) > 0 {
			if err := channels.ValidatePayload(b.Payload); err != nil {
				return fmt.Errorf("broadcasts[%d]: %w", i, err)
			}
		}
	}
	return nil
}

// checkObject accepts an absent or null value, or a JSON object.
func checkObject(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return errNotObject
	}
	return nil
}

// present reports whether an optional JSON value was given.
func present(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }
