package channels

import (
	"errors"
	"strconv"
	"strings"

	"github.com/channelsd/channelsd/pubsub"
)

// Serializer turns Messages into frames and back for one protocol version
// (PROTOCOL.md §2). A connection keeps the serializer negotiated from its
// vsn parameter for its whole life. Implementations are stateless and safe
// for concurrent use; the package-level V1 and V2 values are the only ones.
type Serializer interface {
	// Vsn is the protocol version spoken, "1.0.0" or "2.0.0".
	Vsn() string
	// Encode appends the encoding of m to dst and returns it as a Frame.
	// It fails with ErrBinaryUnsupported for a binary payload the version
	// cannot carry, ErrFieldTooLong for binary header fields over 255
	// bytes (§2.4), and ErrInvalidPayload for a text payload or a ref
	// that is not valid JSON in UTF-8 (nothing else can go in a text
	// frame, RFC 6455 §8.1).
	Encode(dst []byte, m *Message) (Frame, error)
	// Decode parses one frame sent by a client. Errors wrap ErrMalformed.
	// The returned Message may alias data. Topic, event, refs and a text
	// payload must be valid UTF-8; when only the payload is not, the error
	// also wraps ErrInvalidPayload and the Message holds the header
	// (refs, topic, event) without a payload, so that the sender can be
	// answered.
	Decode(data []byte, binary bool) (Message, error)
	// EncodeBroadcast encodes a broadcast once for every socket of this
	// version on the node (pubsub.Message.Encoded caches the result).
	pubsub.Encoder
}

// Errors returned by serializers.
var (
	ErrMalformed         = errors.New("channels: malformed message")
	ErrBinaryUnsupported = errors.New("channels: binary payloads need protocol version 2")
	ErrFieldTooLong      = errors.New("channels: topic, event, ref or status longer than 255 bytes cannot travel in a binary frame")
	ErrUnsupportedVsn    = errors.New("channels: unsupported protocol version")
)

// Negotiate picks the serializer for a connection's vsn parameter (§1.2):
// absent or ~> 1.0.0 selects V1, ~> 2.0.0 selects V2, anything else is
// refused with ErrUnsupportedVsn.
func Negotiate(vsn string) (Serializer, error) {
	if vsn == "" {
		return V1, nil
	}
	major, minor, ok := parseVsn(vsn)
	switch {
	case ok && major == 1 && minor == 0:
		return V1, nil
	case ok && major == 2 && minor == 0:
		return V2, nil
	}
	return nil, ErrUnsupportedVsn
}

// parseVsn reads MAJOR.MINOR.PATCH with an optional pre-release or build
// suffix on the patch, the forms Elixir's Version accepts.
func parseVsn(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) != 3 {
		return 0, 0, false
	}
	patch := parts[2]
	if i := strings.IndexAny(patch, "-+"); i >= 0 {
		patch = patch[:i]
	}
	nums := [3]int{}
	for i, p := range []string{parts[0], parts[1], patch} {
		// Atoi also takes a sign ("+2"), which Elixir's Version refuses.
		n, err := strconv.Atoi(p)
		if err != nil || p[0] < '0' || p[0] > '9' || (len(p) > 1 && p[0] == '0') {
			return 0, 0, false
		}
		nums[i] = n
	}
	return nums[0], nums[1], true
}
