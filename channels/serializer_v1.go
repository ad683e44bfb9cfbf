package channels

import (
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/channelsd/channelsd/pubsub"
)

// V1 speaks protocol version 1.0.0: JSON object text frames, no binary
// (PROTOCOL.md §2.2). It is also a pubsub.Encoder.
var V1 Serializer = v1Serializer{}

// v1Serializer is an empty struct for the same reason as v2Serializer:
// Encoders are compared with ==.
type v1Serializer struct{}

var _ pubsub.Encoder = v1Serializer{}

var (
	errWireV1Binary    = fmt.Errorf("%w: binary frames need protocol version 2", ErrMalformed)
	errWireNotObject   = fmt.Errorf("%w: a version 1 frame must be a JSON object", ErrMalformed)
	errWireNoTopic     = fmt.Errorf("%w: missing topic", ErrMalformed)
	errWireNoEvent     = fmt.Errorf("%w: missing event", ErrMalformed)
	errWireNoPayload   = fmt.Errorf("%w: missing payload", ErrMalformed)
	errWireNoRef       = fmt.Errorf("%w: missing ref", ErrMalformed)
	errWireV1Malformed = [...]error{errWireNoTopic, errWireNoEvent, errWireNoPayload, errWireNoRef}
)

// Keys of a V1 object, in the order of the indexes the decoder uses.
const (
	v1Topic = iota
	v1Event
	v1Payload
	v1Ref
	v1JoinRef
)

func (v1Serializer) Vsn() string { return "1.0.0" }

// Encode writes m as {"event":..,"payload":..,"ref":..,"topic":..}, keys
// in Phoenix's order. V1 output never carries join_ref (§2.2).
func (v1Serializer) Encode(dst []byte, m *Message) (Frame, error) {
	if !m.Binary {
		if err := checkTextMessage(m); err != nil {
			return Frame{}, err
		}
	}
	return v1Encode(dst, m)
}

// v1Encode is Encode without the check of payload and refs, for the
// Messages the runtime builds from checked parts (encodeChecked).
func v1Encode(dst []byte, m *Message) (Frame, error) {
	if m.Binary {
		return Frame{}, ErrBinaryUnsupported
	}
	n := len(`{"event":,"payload":,"ref":,"topic":}`) + len(m.Event) + 2 +
		wireTextPayloadLen(m, len(m.Status)+2) + wireRefLen(m.Ref) + len(m.Topic) + 2
	dst = slices.Grow(dst, n)
	dst = append(dst, `{"event":`...)
	dst = appendJSONString(dst, m.Event)
	dst = append(dst, `,"payload":`...)
	dst = wireAppendTextPayload(dst, m)
	dst = append(dst, `,"ref":`...)
	dst = m.Ref.appendJSON(dst)
	dst = append(dst, `,"topic":`...)
	dst = appendJSONString(dst, m.Topic)
	dst = append(dst, '}')
	return Frame{Data: dst}, nil
}

// EncodeBroadcast implements pubsub.Encoder with one exactly sized
// allocation. Binary broadcasts cannot reach a V1 socket. The ref is null,
// or the broadcast's history position (PROTOCOL.md §12).
func (v1Serializer) EncodeBroadcast(m *pubsub.Message) ([]byte, bool, error) {
	if m.Binary {
		return nil, false, ErrBinaryUnsupported
	}
	if err := ValidatePayload(m.Payload); err != nil {
		return nil, false, err
	}
	n := len(`{"event":,"payload":,"ref":,"topic":}`) + jsonStringLen(m.Event) +
		wirePayloadLen(m.Payload) + wirePosRefLen(m.Pos) + jsonStringLen(m.Topic)
	data := make([]byte, 0, n)
	data = append(data, `{"event":`...)
	data = appendJSONString(data, m.Event)
	data = append(data, `,"payload":`...)
	data = wireAppendPayload(data, m.Payload)
	if m.Pos.IsZero() {
		data = append(data, `,"ref":null,"topic":`...)
	} else {
		data = append(data, `,"ref":`...)
		data = wireAppendPosRef(data, m.Pos)
		data = append(data, `,"topic":`...)
	}
	data = appendJSONString(data, m.Topic)
	data = append(data, '}')
	return data, false, nil
}

// Decode parses a client's JSON object. topic, event, payload and ref are
// required and join_ref is optional, as in Phoenix (§2.2); other keys are
// ignored. A null payload, sent by some third-party clients, is kept as
// the JSON text null. Text that is not valid UTF-8 is refused
// (validate.go).
func (v1Serializer) Decode(data []byte, binary bool) (Message, error) {
	if binary {
		return Message{}, errWireV1Binary
	}
	if !wireValid(data) {
		return Message{}, errWireInvalidJSON
	}
	i := wireSkipWS(data, 0)
	if data[i] != '{' {
		return Message{}, errWireNotObject
	}
	var start, end [5]int
	var have [5]bool
	for i = wireSkipWS(data, i+1); data[i] == '"'; {
		ke := wireStringEnd(data, i)
		k := wireKeyIndex(data[i:ke], "topic", "event", "payload", "ref", "join_ref")
		i = wireSkipWS(data, wireSkipWS(data, ke)+1) // past the colon
		ve := wireValueEnd(data, i)
		if k >= 0 {
			// Later duplicates win, as in encoding/json and Jason.
			start[k], end[k], have[k] = i, ve, true
		}
		if i = wireSkipWS(data, ve); data[i] == ',' {
			i = wireSkipWS(data, i+1)
		}
	}
	for k := v1Topic; k <= v1Ref; k++ {
		if !have[k] {
			return Message{}, errWireV1Malformed[k]
		}
	}
	if data[start[v1Topic]] != '"' {
		return Message{}, errWireBadTopic
	}
	if data[start[v1Event]] != '"' {
		return Message{}, errWireBadEvent
	}
	if !wireIsRef(data[start[v1Ref]]) || (have[v1JoinRef] && !wireIsRef(data[start[v1JoinRef]])) {
		return Message{}, errWireBadRef
	}
	// wireValid, like encoding/json, lets any byte through inside
	// strings; the keys ignored are never relayed.
	payloadUTF8 := true
	if !utf8.Valid(data) {
		for _, k := range [...]int{v1Topic, v1Event, v1Ref, v1JoinRef} {
			if have[k] && !utf8.Valid(data[start[k]:end[k]]) {
				return Message{}, errWireHeaderUTF8
			}
		}
		payloadUTF8 = utf8.Valid(data[start[v1Payload]:end[v1Payload]])
	}

	// phoenix.js puts the payload between event and ref, so the header
	// fields are not contiguous: gather them into one buffer and make one
	// string of it, the fields being substrings.
	var stack [128]byte
	buf := append(stack[:0], data[start[v1Topic]:end[v1Topic]]...)
	topicEnd := len(buf)
	buf = append(buf, data[start[v1Event]:end[v1Event]]...)
	eventEnd := len(buf)
	buf = append(buf, data[start[v1Ref]:end[v1Ref]]...)
	refEnd := len(buf)
	if have[v1JoinRef] {
		buf = append(buf, data[start[v1JoinRef]:end[v1JoinRef]]...)
	}
	s := string(buf)

	var m Message
	var ok bool
	if m.Ref, ok = wireRef(s[eventEnd:refEnd]); !ok {
		return Message{}, errWireBadRef
	}
	if have[v1JoinRef] {
		if m.JoinRef, ok = wireRef(s[refEnd:]); !ok {
			return Message{}, errWireBadRef
		}
	}
	m.Topic = wireString(s[:topicEnd])
	m.Event = wireString(s[topicEnd:eventEnd])
	if !payloadUTF8 {
		return m, errWirePayloadUTF8
	}
	m.Payload = data[start[v1Payload]:end[v1Payload]]
	wireUnwrapReply(&m)
	return m, nil
}
