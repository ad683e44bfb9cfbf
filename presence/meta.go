package presence

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"sync/atomic"
)

// refPrefix makes refs from different processes distinct; the counter
// makes them distinct within one.
var (
	refPrefix  [8]byte
	refCounter atomic.Uint64
)

func init() { _, _ = rand.Read(refPrefix[:]) }

// NewRef returns a fresh phx_ref: 16 URL-safe characters, unique across
// processes with overwhelming probability, like Phoenix's.
func NewRef() string {
	var b [12]byte
	copy(b[:], refPrefix[:4])
	binary.BigEndian.PutUint64(b[4:], refCounter.Add(1)^binary.BigEndian.Uint64(refPrefix[:]))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// WithRefs returns meta with "phx_ref" set to ref and, when prev is not
// empty, "phx_ref_prev" set to prev. meta must be a JSON object; any refs
// it already carries are replaced.
//
// A meta that names neither ref (the usual case: every Track gets one
// through here) has the refs written in front of its members, its bytes
// kept; decoding it into a map and encoding it back was most of what a
// Track cost.
func WithRefs(meta json.RawMessage, ref, prev string) (json.RawMessage, error) {
	if inner, ok := objectMembers(meta); ok && !bytes.Contains(meta, []byte("phx_ref")) {
		out := make([]byte, 0, len(`{"phx_ref":"","phx_ref_prev":"",}`)+len(ref)+len(prev)+len(inner))
		out = append(out, `{"phx_ref":`...)
		out = appendJSONString(out, ref)
		if prev != "" {
			out = append(out, `,"phx_ref_prev":`...)
			out = appendJSONString(out, prev)
		}
		if len(inner) > 0 {
			out = append(out, ',')
			out = append(out, inner...)
		}
		return append(out, '}'), nil
	}
	fields := map[string]json.RawMessage{}
	if len(meta) > 0 {
		if err := json.Unmarshal(meta, &fields); err != nil || fields == nil {
			return nil, ErrNotObject
		}
	}
	fields["phx_ref"], _ = json.Marshal(ref)
	delete(fields, "phx_ref_prev")
	if prev != "" {
		fields["phx_ref_prev"], _ = json.Marshal(prev)
	}
	return json.Marshal(fields)
}

// Add appends meta under key.
func (s State) Add(key string, meta json.RawMessage) {
	e := s[key]
	e.Metas = append(e.Metas, meta)
	s[key] = e
}

// DiffPayload encodes a presence_diff payload.
func DiffPayload(joins, leaves State) ([]byte, error) {
	return json.Marshal(Diff{Joins: joins, Leaves: leaves})
}

// objectMembers returns what lies between the braces of meta, a JSON
// object (spaces trimmed), or false if meta is not one. An empty meta is
// the empty object.
func objectMembers(meta json.RawMessage) ([]byte, bool) {
	if len(meta) == 0 {
		return nil, true
	}
	t := bytes.Trim(meta, " \t\r\n")
	if len(t) < 2 || t[0] != '{' || t[len(t)-1] != '}' || !json.Valid(t) {
		return nil, false
	}
	return bytes.Trim(t[1:len(t)-1], " \t\r\n"), true
}
