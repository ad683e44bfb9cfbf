package channels

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/channelsd/channelsd/pubsub"
)

// V2 speaks protocol version 2.0.0: JSON array text frames (PROTOCOL.md
// §2.3) and binary frames (§2.4). It is also a pubsub.Encoder.
var V2 Serializer = v2Serializer{}

// v2Serializer is an empty struct, not a pointer: pubsub caches encodings
// by comparing Encoders with ==, and values of an empty struct type always
// compare equal where pointers to zero-size values need not.
type v2Serializer struct{}

var _ pubsub.Encoder = v2Serializer{}

// Binary frame kinds (§2.4).
const (
	wireKindPush      = 0
	wireKindReply     = 1
	wireKindBroadcast = 2
)

// Decoding errors. They are built once: a client sending garbage should
// not make the server allocate per frame to tell it so.
var (
	errWireInvalidJSON   = fmt.Errorf("%w: invalid JSON", ErrMalformed)
	errWireNotArray      = fmt.Errorf("%w: a version 2 text frame must be a JSON array", ErrMalformed)
	errWireShortArray    = fmt.Errorf("%w: a version 2 text frame needs 5 elements", ErrMalformed)
	errWireBadRef        = fmt.Errorf("%w: join_ref and ref must be strings, numbers or null", ErrMalformed)
	errWireBadTopic      = fmt.Errorf("%w: topic must be a string", ErrMalformed)
	errWireBadEvent      = fmt.Errorf("%w: event must be a string", ErrMalformed)
	errWireBinaryKind    = fmt.Errorf("%w: a client binary frame must be of kind 0 (push)", ErrMalformed)
	errWireBinaryUnknown = fmt.Errorf("%w: unknown binary frame kind", ErrMalformed)
	errWireBinaryShort   = fmt.Errorf("%w: binary frame shorter than its header", ErrMalformed)
)

func (v2Serializer) Vsn() string { return "2.0.0" }

// Encode writes m as a JSON array, or as a binary frame when its payload
// is binary (§2.4): a reply (kind 1) when m is a reply, a broadcast (kind
// 2) when both refs are null, a push (kind 0) otherwise.
func (v2Serializer) Encode(dst []byte, m *Message) (Frame, error) {
	if !m.Binary {
		if err := checkTextMessage(m); err != nil {
			return Frame{}, err
		}
	}
	return v2Encode(dst, m)
}

// v2Encode is Encode without the check of payload and refs, for the
// Messages the runtime builds from checked parts (encodeChecked).
func v2Encode(dst []byte, m *Message) (Frame, error) {
	if m.Binary {
		data, err := v2AppendBinary(dst, m)
		if err != nil {
			return Frame{}, err
		}
		return Frame{Data: data, Binary: true}, nil
	}
	// An estimate: strings needing escapes grow past it, at the cost of
	// one more copy.
	n := len(`[,,,,]`) + wireRefLen(m.JoinRef) + wireRefLen(m.Ref) +
		len(m.Topic) + 2 + len(m.Event) + 2 + wireTextPayloadLen(m, len(m.Status)+2)
	dst = slices.Grow(dst, n)
	dst = append(dst, '[')
	dst = m.JoinRef.appendJSON(dst)
	dst = append(dst, ',')
	dst = m.Ref.appendJSON(dst)
	dst = append(dst, ',')
	dst = appendJSONString(dst, m.Topic)
	dst = append(dst, ',')
	dst = appendJSONString(dst, m.Event)
	dst = append(dst, ',')
	dst = wireAppendTextPayload(dst, m)
	dst = append(dst, ']')
	return Frame{Data: dst}, nil
}

// EncodeBroadcast implements pubsub.Encoder: one exactly sized allocation
// per broadcast, shared by every V2 socket on the topic. A text frame's
// ref is null, or the broadcast's history position (PROTOCOL.md §12). A
// binary broadcast (kind 2, §2.4) has no ref field, so it cannot carry
// the position: a client that needs positions uses JSON payloads.
func (v2Serializer) EncodeBroadcast(m *pubsub.Message) ([]byte, bool, error) {
	if m.Binary {
		if len(m.Topic) > 255 || len(m.Event) > 255 {
			return nil, false, ErrFieldTooLong
		}
		data := make([]byte, 3+len(m.Topic)+len(m.Event)+len(m.Payload))
		data[0] = wireKindBroadcast
		data[1] = byte(len(m.Topic))
		data[2] = byte(len(m.Event))
		n := 3 + copy(data[3:], m.Topic)
		n += copy(data[n:], m.Event)
		copy(data[n:], m.Payload)
		return data, true, nil
	}
	if err := ValidatePayload(m.Payload); err != nil {
		return nil, false, err
	}
	n := len(`[null,,,,]`) + wirePosRefLen(m.Pos) + jsonStringLen(m.Topic) + jsonStringLen(m.Event) + wirePayloadLen(m.Payload)
	data := make([]byte, 0, n)
	if m.Pos.IsZero() {
		data = append(data, `[null,null,`...)
	} else {
		data = append(data, `[null,`...)
		data = wireAppendPosRef(data, m.Pos)
		data = append(data, ',')
	}
	data = appendJSONString(data, m.Topic)
	data = append(data, ',')
	data = appendJSONString(data, m.Event)
	data = append(data, ',')
	data = wireAppendPayload(data, m.Payload)
	data = append(data, ']')
	return data, false, nil
}

// Decode parses a client frame: a JSON array of at least five elements
// (extra ones are ignored, as Phoenix does, §2.3) or a binary push. Text
// that is not valid UTF-8 is refused (validate.go).
func (v2Serializer) Decode(data []byte, binary bool) (Message, error) {
	if binary {
		return v2DecodeClientBinary(data)
	}
	if !wireValid(data) {
		return Message{}, errWireInvalidJSON
	}
	i := wireSkipWS(data, 0)
	if data[i] != '[' {
		return Message{}, errWireNotArray
	}
	var start, end [5]int
	n := 0
	if i = wireSkipWS(data, i+1); data[i] != ']' {
		for n < 5 {
			start[n], end[n] = i, wireValueEnd(data, i)
			n++
			i = wireSkipWS(data, end[n-1])
			if data[i] == ']' {
				break
			}
			i = wireSkipWS(data, i+1) // past the comma
		}
	}
	if n < 5 {
		return Message{}, errWireShortArray
	}
	if !wireIsRef(data[start[0]]) || !wireIsRef(data[start[1]]) {
		return Message{}, errWireBadRef
	}
	if data[start[2]] != '"' {
		return Message{}, errWireBadTopic
	}
	if data[start[3]] != '"' {
		return Message{}, errWireBadEvent
	}
	// wireValid, like encoding/json, lets any byte through inside
	// strings. Whatever bytes the extra elements hold is never relayed.
	payloadUTF8 := true
	if !utf8.Valid(data) {
		if !utf8.Valid(data[:end[3]]) {
			return Message{}, errWireHeaderUTF8
		}
		payloadUTF8 = utf8.Valid(data[start[4]:end[4]])
	}
	// One string holds the refs, topic and event; the fields are
	// substrings of it. The payload stays in data.
	hdr := string(data[:end[3]])
	var m Message
	var ok1, ok2 bool
	m.JoinRef, ok1 = wireRef(hdr[start[0]:end[0]])
	m.Ref, ok2 = wireRef(hdr[start[1]:end[1]])
	if !ok1 || !ok2 {
		return Message{}, errWireBadRef
	}
	m.Topic = wireString(hdr[start[2]:end[2]])
	m.Event = wireString(hdr[start[3]:end[3]])
	if !payloadUTF8 {
		return m, errWirePayloadUTF8
	}
	m.Payload = data[start[4]:end[4]]
	wireUnwrapReply(&m)
	return m, nil
}

// wireIsRef reports whether a JSON value starting with c can be a ref: a
// string, a number or null.
func wireIsRef(c byte) bool {
	return c == '"' || c == 'n' || c == '-' || (c >= '0' && c <= '9')
}

// v2DecodeClientBinary parses a kind 0 push from a client (§2.4): the
// only binary frame a server accepts.
func v2DecodeClientBinary(data []byte) (Message, error) {
	if len(data) == 0 {
		return Message{}, errWireBinaryShort
	}
	if data[0] != wireKindPush {
		return Message{}, errWireBinaryKind
	}
	if len(data) < 5 {
		return Message{}, errWireBinaryShort
	}
	j, r, t, e := int(data[1]), int(data[2]), int(data[3]), int(data[4])
	h := 5 + j + r + t + e
	if len(data) < h {
		return Message{}, errWireBinaryShort
	}
	// Refs, topic and event end up in text frames too (replies to V2
	// text sockets, broadcasts to V1 ones); the payload stays binary.
	if !utf8.Valid(data[5:h]) {
		return Message{}, errWireHeaderUTF8
	}
	o := 5
	jr, ref := data[o:o+j], data[o+j:o+j+r]
	o += j + r
	m := wireBinaryHeader(jr, ref, data[o:o+t], data[o+t:o+t+e], true)
	m.Payload = data[h:]
	m.Binary = true
	return m, nil
}

// wireBinaryHeader builds a Message from binary header fields with a single
// allocation: refs, topic and event are substrings of one string. Binary
// refs are bare bytes; they become JSON strings, an empty one for length 0
// (§2.4: Phoenix reads length 0 as "", not as null), except that ref
// stays null when hasRef is false (server pushes have no ref field).
func wireBinaryHeader(jr, ref, topic, event []byte, hasRef bool) Message {
	var stack [128]byte
	buf := wireAppendQuotedBytes(stack[:0], jr)
	jrEnd := len(buf)
	if hasRef {
		buf = wireAppendQuotedBytes(buf, ref)
	}
	refEnd := len(buf)
	buf = append(buf, topic...)
	topicEnd := len(buf)
	buf = append(buf, event...)
	s := string(buf)
	m := Message{
		JoinRef: Ref(s[:jrEnd]),
		Topic:   s[refEnd:topicEnd],
		Event:   s[topicEnd:],
	}
	if hasRef {
		m.Ref = Ref(s[jrEnd:refEnd])
	}
	return m
}

// DecodeServerBinary parses a binary frame sent by a server (§2.4) the way
// phoenix.js does, for test clients and load generators: kind 0 push
// (join_ref, no ref), kind 1 reply (Event EventReply, Status set, Payload
// the response) and kind 2 broadcast (both refs null). As in phoenix.js, a
// ref of length 0 decodes as the empty string, not as null. The Message
// aliases data.
func DecodeServerBinary(data []byte) (Message, error) {
	if len(data) == 0 {
		return Message{}, errWireBinaryShort
	}
	var (
		m Message
		h int
	)
	switch data[0] {
	case wireKindPush:
		if len(data) < 4 {
			return Message{}, errWireBinaryShort
		}
		j, t, e := int(data[1]), int(data[2]), int(data[3])
		if h = 4 + j + t + e; len(data) < h {
			return Message{}, errWireBinaryShort
		}
		m = wireBinaryHeader(data[4:4+j], nil, data[4+j:4+j+t], data[4+j+t:h], false)
	case wireKindReply:
		if len(data) < 5 {
			return Message{}, errWireBinaryShort
		}
		j, r, t, s := int(data[1]), int(data[2]), int(data[3]), int(data[4])
		if h = 5 + j + r + t + s; len(data) < h {
			return Message{}, errWireBinaryShort
		}
		o := 5 + j + r
		// The status takes the event's place in the shared header string.
		m = wireBinaryHeader(data[5:5+j], data[5+j:o], data[o:o+t], data[o+t:h], true)
		m.Status, m.Event = m.Event, EventReply
	case wireKindBroadcast:
		if len(data) < 3 {
			return Message{}, errWireBinaryShort
		}
		t, e := int(data[1]), int(data[2])
		if h = 3 + t + e; len(data) < h {
			return Message{}, errWireBinaryShort
		}
		m.Topic = string(data[3 : 3+t])
		m.Event = string(data[3+t : h])
	default:
		return Message{}, errWireBinaryUnknown
	}
	m.Payload = data[h:]
	m.Binary = true
	return m, nil
}

// EncodeClientBinary appends m as a binary push from a client (§2.4, kind
// 0 with both refs): the counterpart of DecodeServerBinary for test clients
// and load generators. m.Payload is sent as is whether or not m.Binary is
// set.
func EncodeClientBinary(dst []byte, m *Message) (Frame, error) {
	jr, ref := wireRefText(m.JoinRef), wireRefText(m.Ref)
	if len(jr) > 255 || len(ref) > 255 || len(m.Topic) > 255 || len(m.Event) > 255 {
		return Frame{}, ErrFieldTooLong
	}
	dst = slices.Grow(dst, 5+len(jr)+len(ref)+len(m.Topic)+len(m.Event)+len(m.Payload))
	dst = append(dst, wireKindPush, byte(len(jr)), byte(len(ref)), byte(len(m.Topic)), byte(len(m.Event)))
	dst = append(dst, jr...)
	dst = append(dst, ref...)
	dst = append(dst, m.Topic...)
	dst = append(dst, m.Event...)
	dst = append(dst, m.Payload...)
	return Frame{Data: dst, Binary: true}, nil
}

// v2AppendBinary encodes a server message with a binary payload (§2.4).
func v2AppendBinary(dst []byte, m *Message) ([]byte, error) {
	switch {
	case m.Event == EventReply:
		jr, ref, status := wireRefText(m.JoinRef), wireRefText(m.Ref), wireStatus(m.Status)
		if len(jr) > 255 || len(ref) > 255 || len(m.Topic) > 255 || len(status) > 255 {
			return nil, ErrFieldTooLong
		}
		dst = slices.Grow(dst, 5+len(jr)+len(ref)+len(m.Topic)+len(status)+len(m.Payload))
		dst = append(dst, wireKindReply, byte(len(jr)), byte(len(ref)), byte(len(m.Topic)), byte(len(status)))
		dst = append(dst, jr...)
		dst = append(dst, ref...)
		dst = append(dst, m.Topic...)
		dst = append(dst, status...)
	case m.JoinRef.IsNull() && m.Ref.IsNull():
		if len(m.Topic) > 255 || len(m.Event) > 255 {
			return nil, ErrFieldTooLong
		}
		dst = slices.Grow(dst, 3+len(m.Topic)+len(m.Event)+len(m.Payload))
		dst = append(dst, wireKindBroadcast, byte(len(m.Topic)), byte(len(m.Event)))
		dst = append(dst, m.Topic...)
		dst = append(dst, m.Event...)
	default:
		// A server push has no ref field (§2.4); pushes carry a null ref
		// anyway (§2.5).
		jr := wireRefText(m.JoinRef)
		if len(jr) > 255 || len(m.Topic) > 255 || len(m.Event) > 255 {
			return nil, ErrFieldTooLong
		}
		dst = slices.Grow(dst, 4+len(jr)+len(m.Topic)+len(m.Event)+len(m.Payload))
		dst = append(dst, wireKindPush, byte(len(jr)), byte(len(m.Topic)), byte(len(m.Event)))
		dst = append(dst, jr...)
		dst = append(dst, m.Topic...)
		dst = append(dst, m.Event...)
	}
	return append(dst, m.Payload...), nil
}

// wireRefText is Ref.Text without its allocation in the usual case of a
// string ref that needs no unescaping.
func wireRefText(r Ref) string {
	if r.IsNull() {
		return ""
	}
	if len(r) >= 2 && r[0] == '"' && r[len(r)-1] == '"' {
		inner := string(r[1 : len(r)-1])
		if strings.IndexByte(inner, '\\') < 0 && utf8.ValidString(inner) {
			return inner
		}
	}
	return r.Text()
}

// wireStatus is the reply status to send: a reply built without one is a
// success.
func wireStatus(s string) string {
	if s == "" {
		return "ok"
	}
	return s
}

// wirePosRefLen and wireAppendPosRef write a broadcast's ref: null, or
// its history position as a JSON string, "<epoch>:<offset>". The epoch
// goes through the JSON string writer although valid epochs never need
// escaping: a position from a foreign store must not break the frame.
func wirePosRefLen(p pubsub.Position) int {
	if p.IsZero() {
		return len("null")
	}
	return jsonStringLen(p.Epoch) + 1 + uintLen(p.Offset)
}

func wireAppendPosRef(dst []byte, p pubsub.Position) []byte {
	if p.IsZero() {
		return append(dst, "null"...)
	}
	dst = appendJSONString(dst, p.Epoch)
	dst[len(dst)-1] = ':' // the epoch's closing quote
	dst = strconv.AppendUint(dst, p.Offset, 10)
	return append(dst, '"')
}

// uintLen is the number of decimal digits of n.
func uintLen(n uint64) int {
	l := 1
	for n >= 10 {
		n /= 10
		l++
	}
	return l
}

func wireRefLen(r Ref) int {
	if r.IsNull() {
		return len("null")
	}
	return len(r)
}

// wirePayloadLen and wireAppendPayload write a text payload: raw JSON
// copied verbatim, {} when there is none.
func wirePayloadLen(p []byte) int {
	if len(p) == 0 {
		return len("{}")
	}
	return len(p)
}

func wireAppendPayload(dst, p []byte) []byte {
	if len(p) == 0 {
		return append(dst, "{}"...)
	}
	return append(dst, p...)
}

// wireTextPayloadLen is the length of what wireAppendTextPayload writes
// given the length of the encoded status.
func wireTextPayloadLen(m *Message, statusLen int) int {
	if m.Event != EventReply {
		return wirePayloadLen(m.Payload)
	}
	return len(`{"response":,"status":}`) + wirePayloadLen(m.Payload) + statusLen
}

// wireAppendTextPayload writes m's text payload. A reply wraps its
// response as {"response":R,"status":S} (§2.5), keys in Phoenix's order.
func wireAppendTextPayload(dst []byte, m *Message) []byte {
	if m.Event != EventReply {
		return wireAppendPayload(dst, m.Payload)
	}
	dst = append(dst, `{"response":`...)
	dst = wireAppendPayload(dst, m.Payload)
	dst = append(dst, `,"status":`...)
	dst = appendJSONString(dst, wireStatus(m.Status))
	return append(dst, '}')
}

// wireUnwrapReply takes apart the {"status":S,"response":R} payload of a
// decoded phx_reply, which only a client receives (§2.5): Status becomes S
// and Payload R. A payload without a string status and a response is left
// as it is. m.Payload must be valid JSON.
func wireUnwrapReply(m *Message) {
	p := m.Payload
	if m.Event != EventReply || len(p) == 0 || p[0] != '{' {
		return
	}
	var status, response []byte
	i := wireSkipWS(p, 1)
	for i < len(p) && p[i] == '"' {
		ke := wireStringEnd(p, i)
		key := p[i:ke]
		i = wireSkipWS(p, wireSkipWS(p, ke)+1) // past the colon
		ve := wireValueEnd(p, i)
		// Later keys win, as in encoding/json and Jason.
		switch wireKeyIndex(key, "status", "response") {
		case 0:
			status = p[i:ve]
		case 1:
			response = p[i:ve]
		}
		if i = wireSkipWS(p, ve); i < len(p) && p[i] == ',' {
			i = wireSkipWS(p, i+1)
		}
	}
	if status == nil || status[0] != '"' || response == nil {
		return
	}
	m.Status = wireString(string(status))
	m.Payload = response
}

// wireKeyIndex returns the position in names of the JSON object key raw (a
// string literal, valid JSON), or -1. Keys are compared after unescaping,
// so "st\u0061tus" is status, as in any JSON decoder.
func wireKeyIndex(raw []byte, names ...string) int {
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		key := wireString(string(raw))
		for k, name := range names {
			if key == name {
				return k
			}
		}
		return -1
	}
	for k, name := range names {
		if string(inner) == name {
			return k
		}
	}
	return -1
}
