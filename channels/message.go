package channels

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// Reserved events and topics (PROTOCOL.md §3.1).
const (
	EventJoin      = "phx_join"
	EventLeave     = "phx_leave"
	EventReply     = "phx_reply"
	EventClose     = "phx_close"
	EventError     = "phx_error"
	EventHeartbeat = "heartbeat"

	EventPresenceState = "presence_state"
	EventPresenceDiff  = "presence_diff"

	// TopicPhoenix carries socket-level traffic such as heartbeats.
	TopicPhoenix = "phoenix"
)

// Ref is a join_ref or ref exactly as it travelled, kept as its raw JSON
// text: `"5"` for the string 5, `5` for the number 5. The zero value is
// null. Refs are opaque to the server; PROTOCOL.md §2.1 requires echoing
// them back as the same JSON value because phoenix.js compares with ===.
type Ref string

// NullRef is the JSON null ref.
const NullRef Ref = ""

// StringRef returns the Ref for the JSON string s.
func StringRef(s string) Ref { return Ref(appendJSONString(nil, s)) }

// IsNull reports whether r is JSON null (or absent).
func (r Ref) IsNull() bool { return r == "" || r == "null" }

// Text returns the ref as the client wrote it, unquoted if it is a JSON
// string. Binary frames carry refs as bare bytes (§2.4).
func (r Ref) Text() string {
	if r.IsNull() {
		return ""
	}
	if r[0] == '"' {
		var s string
		if err := json.Unmarshal([]byte(r), &s); err == nil {
			return s
		}
	}
	return string(r)
}

// appendJSON appends the ref as a JSON value.
func (r Ref) appendJSON(dst []byte) []byte {
	if r.IsNull() {
		return append(dst, "null"...)
	}
	return append(dst, r...)
}

// refFromJSON validates raw as a JSON value usable as a ref: a string, a
// number or null.
func refFromJSON(raw []byte) (Ref, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return NullRef, nil
	}
	switch c := raw[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return NullRef, err
		}
		return Ref(raw), nil
	case c == '-' || (c >= '0' && c <= '9'):
		if _, err := strconv.ParseFloat(string(raw), 64); err != nil {
			return NullRef, errors.New("ref is not a valid number")
		}
		return Ref(raw), nil
	}
	return NullRef, errors.New("ref must be a string, a number or null")
}

// Message is one Phoenix message (PROTOCOL.md §2.1), the unit that
// serializers decode from and encode to frames.
//
// Payload is kept as it travelled: raw JSON text, or raw bytes when Binary
// is set, so a broadcast passes through the server without being decoded
// and encoded again.
//
// A reply is a Message with Event EventReply whose Status holds the reply
// status ("ok", "error", ...) and whose Payload holds only the response;
// serializers build the {"status":..,"response":..} envelope (or the binary
// reply header) when they encode it, and take it apart when they decode it.
type Message struct {
	JoinRef Ref
	Ref     Ref
	Topic   string
	Event   string
	Status  string
	Payload []byte
	Binary  bool
}

// Frame is one encoded WebSocket message (or long-poll line). Frames handed
// to a transport are shared between sockets and must never be modified.
type Frame struct {
	Data   []byte
	Binary bool
}
