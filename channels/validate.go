package channels

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// What reaches a client in a text frame must be valid UTF-8 (RFC 6455
// §8.1: browsers and Node close the whole connection on a text frame that
// is not, with 1006 or 1007) and valid JSON for its serializer. Go's
// encoding/json does not check the first inside strings, and keeps
// json.RawMessage bytes as they are, so one invalid byte from one client
// relayed to a topic would disconnect every WebSocket subscriber of that
// topic. Bytes are therefore checked where they enter:
//
//   - client frames, in the serializers' Decode (every transport's text
//     and binary frames go through it): a header (topic, event, join_ref,
//     ref) that is not valid UTF-8 is a malformed message; a payload that
//     is not gets the sender an error reply on its topic
//     (ErrInvalidPayload) and goes no further;
//   - what Go code hands to Push, Reply, Broadcast, BroadcastFrom, Track,
//     UpdatePresence and Endpoint.Broadcast (EncodePayload, and the
//     presence key): refused with an error the caller sees;
//   - the HTTP API and other entry points outside this package call
//     ValidatePayload.
//
// And the encoders check once more, as the last line (Encode,
// EncodeBroadcast): a text payload or ref that is not valid UTF-8 JSON is
// refused with ErrInvalidPayload rather than written, whatever handed it
// over (an envelope from another node, a presence diff, a client library
// that built a Message itself). EncodeBroadcast checks every broadcast, at
// most once per serializer however many sockets receive it; the runtime's
// own pushes and replies, built from parts checked above, skip the
// second check (encodeChecked). Refusing rather than replacing bytes: the
// sender has been told at the entry points above, so what is left is a
// bug or a hostile peer node, and a message rewritten in flight (its JSON
// re-scanned and patched with U+FFFD) would be a second, slower, encoder
// that hides it. Binary payloads (V2 binary frames) are opaque bytes, never
// written into a text frame: a V1 socket cannot receive them at all.

// Errors of the validation.
var (
	// ErrInvalidPayload is what the checks above return for a text
	// payload (or a ref) that is not valid UTF-8 or not one JSON value.
	ErrInvalidPayload = errors.New("channels: payload is not valid JSON in UTF-8")

	errPayloadNotUTF8 = fmt.Errorf("%w: not valid UTF-8", ErrInvalidPayload)
	errPayloadNotJSON = fmt.Errorf("%w: not valid JSON", ErrInvalidPayload)
	errRefNotJSON     = fmt.Errorf("%w: a ref must be a JSON string, number or null", ErrInvalidPayload)
	// A presence key is a key of presence_state and presence_diff
	// objects, sent to every subscriber.
	errPresenceKeyUTF8 = fmt.Errorf("%w: presence key is not valid UTF-8", ErrInvalidPayload)

	errWireHeaderUTF8 = fmt.Errorf("%w: topic, event, join_ref and ref must be valid UTF-8", ErrMalformed)
	// errWirePayloadUTF8 is returned by Decode with the message's header
	// (JoinRef, Ref, Topic, Event) filled in, so that the sender can be
	// answered on its topic with its ref.
	errWirePayloadUTF8 error = wirePayloadUTF8Error{}
)

// wirePayloadUTF8Error is both a malformed message and an invalid payload.
type wirePayloadUTF8Error struct{}

func (wirePayloadUTF8Error) Error() string {
	return "channels: malformed message: payload is not valid UTF-8"
}

func (wirePayloadUTF8Error) Is(target error) bool {
	return target == ErrMalformed || target == ErrInvalidPayload
}

// reasonInvalidPayload is the error reply to a client message whose
// payload is not valid UTF-8 (README "Limits").
var reasonInvalidPayload = reasonJSON("payload is not valid UTF-8")

// ValidatePayload returns nil if p can be the payload of a text frame:
// one JSON value in valid UTF-8. An empty p is valid (it is sent as {}).
// Otherwise the error wraps ErrInvalidPayload and says which. Entry points
// outside this package (the HTTP API) call it before they publish.
func ValidatePayload(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if !utf8.Valid(p) {
		return errPayloadNotUTF8
	}
	if !wireValid(p) {
		return errPayloadNotJSON
	}
	return nil
}

// validRef reports whether r can be written into a text frame as it is:
// null, or a JSON string or number in valid UTF-8. Refs are a few bytes.
func validRef(r Ref) bool {
	if r.IsNull() {
		return true
	}
	switch c := r[0]; {
	case c == '"':
		return wireScanString([]byte(r), 0) == len(r) && utf8.ValidString(string(r))
	case c == '-' || (c >= '0' && c <= '9'):
		return wireScanNumber([]byte(r), 0) == len(r)
	}
	return false
}

// encodeChecked encodes a Message the runtime built from parts already
// checked: refs from Decode or validRef, payloads from Decode or
// EncodePayload, constants. Checking them again on every push and reply
// would cost several times the encoding itself (BENCHMARKS.md: a 100-byte
// payload's JSON scan is most of a V2 decode). Encode, for anyone else,
// checks.
func encodeChecked(ser Serializer, dst []byte, m *Message) (Frame, error) {
	switch ser.(type) {
	case v1Serializer:
		return v1Encode(dst, m)
	case v2Serializer:
		return v2Encode(dst, m)
	}
	return ser.Encode(dst, m)
}

// checkTextMessage is the encoders' last check of a Message bound for a
// text frame: payload and refs valid UTF-8 JSON. Topic, event and status
// need none: appendJSONString writes any string as valid JSON.
func checkTextMessage(m *Message) error {
	if !validRef(m.JoinRef) || !validRef(m.Ref) {
		return errRefNotJSON
	}
	return ValidatePayload(m.Payload)
}
