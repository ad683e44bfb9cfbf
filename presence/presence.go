package presence

import (
	"context"
	"encoding/json"
	"errors"
)

// Tracker keeps who is present on which topic and tells the topic's
// subscribers when that changes.
//
// Entries belong to an owner (one channel instance on one socket); a
// socket tracks a key at most once per topic. Every change is broadcast to
// the topic as a presence_diff in Phoenix's shape,
// {"joins":{key:{"metas":[...]}},"leaves":{...}}, through the PubSub the
// tracker was built with.
//
// Contract shared by all implementations:
//   - Track, Update and Untrack are visible to List on this node when they
//     return; other nodes see them within the implementation's
//     propagation bound.
//   - Every meta carries "phx_ref", unique per track or update; an update
//     carries "phx_ref_prev", the ref it replaces.
//   - The diffs a subscriber receives, applied in order on top of a List
//     taken after it subscribed, yield the tracker's state (the JavaScript
//     Presence class relies on this and tolerates repeats).
//   - Keys and metas are bounded (Limits: a key of at most 256 bytes, a
//     meta of 2 KiB, 10,000 entries per topic and node, 16 keys per owner
//     by default) and must be fit for a client's frame: a UTF-8 key, a
//     meta that is a JSON object in UTF-8. Track and Update refuse
//     anything else with ErrKeyTooLong, ErrMetaTooLarge, ErrInvalidKey,
//     ErrNotObject, ErrTopicFull or ErrTooManyKeys (wrapped), and change
//     nothing: every diff and state
//     repeats each entry to every subscriber of the topic, so what one
//     client names itself is multiplied by the room. Entries read from
//     elsewhere (other nodes) that are not fit are skipped, never relayed.
type Tracker interface {
	// Track adds key with meta (a JSON object) for owner on topic and
	// returns the new phx_ref.
	Track(ctx context.Context, topic, owner, key string, meta json.RawMessage) (string, error)
	// Update replaces the meta of owner's key on topic.
	Update(ctx context.Context, topic, owner, key string, meta json.RawMessage) (string, error)
	// Untrack removes owner's key from topic; untracking what is not
	// tracked is not an error.
	Untrack(ctx context.Context, topic, owner, key string) error
	// UntrackAll removes every entry of owner on topic.
	UntrackAll(ctx context.Context, topic, owner string) error
	// List returns the topic's entries grouped by key.
	List(ctx context.Context, topic string) (State, error)
	// Close stops background work. Entries of this node are removed.
	Close() error
}

// StateAppender is implemented by the trackers that write a topic's
// presence_state payload straight from their table (Local): every join
// into a room pushes the room whole, and building a State to encode it
// was most of a join's cost in the tracker. The payload is what
// List's State encodes to (AppendJSON), valid JSON in UTF-8, and the
// call counts as a List for the contract of Tracker.
type StateAppender interface {
	// AppendState appends topic's presence_state payload to b.
	AppendState(ctx context.Context, b []byte, topic string) ([]byte, error)
}

// EntryCounter is implemented by the trackers that can say how many
// entries this node tracks (Local and presence/redis's Tracker): the
// node's presence gauge reads it at scrape time.
type EntryCounter interface {
	// Entries returns the number of entries (one per owner, key and
	// topic) tracked on this node; other nodes' entries are not counted.
	Entries() int
}

// ErrNotTracked is returned by Update for a key the owner does not track.
var ErrNotTracked = errors.New("presence: key not tracked by this owner")

// ErrAlreadyTracked is returned by Track for a key the owner already tracks
// on the topic (use Update).
var ErrAlreadyTracked = errors.New("presence: key already tracked by this owner")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("presence: tracker closed")

// ErrNotObject is returned when a meta is not a JSON object.
var ErrNotObject = errors.New("presence: meta must be a JSON object")

// State maps each key to its metas, the shape of presence_state.
type State map[string]Entry

// Entry is one key's presences; several metas mean several sockets
// (devices, tabs) tracked the same key.
type Entry struct {
	Metas []json.RawMessage `json:"metas"`
}

// Diff is the payload of presence_diff.
type Diff struct {
	Joins  State `json:"joins"`
	Leaves State `json:"leaves"`
}

// MarshalJSON writes {} rather than null for an empty State, as Phoenix
// does: the JavaScript client iterates over both fields.
func (s State) MarshalJSON() ([]byte, error) { return s.AppendJSON(nil), nil }

// AppendJSON appends s as a presence_state payload. It exists because
// every join pushes the whole room: through encoding/json, which sorts
// keys by reflection and re-validates every meta, encoding the room was
// half of a node's CPU in a join storm. Keys come in map order, as
// Phoenix's encoder writes a large map's (clients read an object, not
// an order), and are escaped as encoding/json escapes them. Metas are appended as
// they are: every meta is valid JSON (Track checks it, and a value read
// from Redis is decoded before its meta is kept). An entry without metas
// gets [], where encoding/json would write null.
func (s State) AppendJSON(b []byte) []byte {
	if len(s) == 0 {
		return append(b, "{}"...)
	}
	b = append(b, '{')
	first := true
	for k, e := range s {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, k)
		b = append(b, `:{"metas":[`...)
		for j, m := range e.Metas {
			if j > 0 {
				b = append(b, ',')
			}
			if len(m) == 0 {
				m = json.RawMessage("null")
			}
			b = append(b, m...)
		}
		b = append(b, "]}"...)
	}
	return append(b, '}')
}

// StateWriter appends a presence_state payload entry by entry, for a
// tracker that writes it from its own table (StateAppender). The entries
// of a key must come one after another, in the order of their metas: a
// key written twice would be a duplicate member of the object, which a
// client reads as the last one only.
type StateWriter struct {
	B   []byte // the payload so far
	n   int
	key string
}

// Add appends one entry.
func (w *StateWriter) Add(key string, meta json.RawMessage) {
	switch {
	case w.n == 0:
		w.B = append(w.B, '{')
		w.B = appendJSONString(w.B, key)
		w.B = append(w.B, `:{"metas":[`...)
	case key != w.key:
		w.B = append(w.B, "]},"...)
		w.B = appendJSONString(w.B, key)
		w.B = append(w.B, `:{"metas":[`...)
	default:
		w.B = append(w.B, ',')
	}
	w.n++
	w.key = key
	w.B = append(w.B, meta...)
}

// Finish ends the payload and returns it.
func (w *StateWriter) Finish() []byte {
	if w.n == 0 {
		return append(w.B, "{}"...)
	}
	return append(w.B, "]}}"...)
}

// appendJSONString appends k quoted as encoding/json quotes it: keys of
// plain printable ASCII directly, any other through encoding/json (which
// escapes control characters, <, >, & and invalid UTF-8).
func appendJSONString(b []byte, k string) []byte {
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(k)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, k...)
	return append(b, '"')
}
