package redis

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"unicode/utf8"

	"github.com/channelsd/channelsd/pubsub"
)

// Envelope layout (version 2), the bytes PUBLISHed on "<prefix>:t:<topic>":
//
//	byte     version (2)
//	byte     flags: bit 0 set when the payload is binary;
//	         bit 1 set when an extension area follows the event
//	8 bytes  send time on the origin node, Unix nanoseconds, big-endian
//	         (0: unknown, as for node-to-node calls); receivers compare
//	         it with their own clock for the cross-node latency, see
//	         PubSub.ObserveCrossNode (skew shifts it; negatives become 0)
//	uvarint  len(origin), origin node id
//	uvarint  sequence number, per origin node (message id = origin + seq)
//	uvarint  len(from), sender subscriber id ("" for a plain broadcast)
//	uvarint  len(event), event
//	         only with flag bit 1: uvarint len(ext), ext (see below)
//	...      payload, verbatim, to the end
//
// Version 1 is the same without the send time; it is still decoded (its
// messages are dispatched, and simply not counted in the cross-node
// latency).
//
// The topic is not repeated: it is the channel name. The payload is last
// and unframed so that neither side copies or escapes it; binary
// payloads travel as they are.
//
// The extension area is where header fields are added. It is a sequence
// of records, uvarint tag, uvarint len, value, and a reader skips the
// records whose tag it does not know. The tags:
//
//	tag  value
//	1    history position, pubsub.Position's wire form "<epoch>:<offset>"
//	     (offset at least 1), for a broadcast of a topic with history
//	     (history.go); written by the Redis script that publishes it
//
// A record of a known tag that does not parse, or a known tag twice, is
// a malformed area (a decode error, as a record running past the area
// is). The release of b847059 refuses flag bit 1 (an unknown flag), so
// writers set it only through the Gate (gate.go): the area is form
// "envelope" at level 3, which the release before history reads (and
// skips). A new tag that older readers may skip needs no new level
// (doc.go, rule 2). Unknown versions and other unknown flag bits stay
// decode errors: they are the envelope's gate for a layout that even this
// reader would misparse. See doc.go, "Cross-node compatibility", for the
// rule every change to a cross-node form follows.
const (
	envelopeVersion   = 2
	envelopeVersionV1 = 1
	flagBinary        = 1 << 0
	flagExt           = 1 << 1

	// extTagPosition is the record of a history position.
	extTagPosition = 1
	// maxPositionLen is the longest wire form of a position: a 32-byte
	// epoch, ':' and 20 digits. Under 128, so its length is one varint
	// byte, and so is the length of an area holding only its record.
	maxPositionLen = 32 + 1 + 20
	// maxPositionExt is the most a position adds to an envelope: the
	// area's length byte, the record's tag and length bytes, the value.
	maxPositionExt = 3 + maxPositionLen
)

type envelope struct {
	origin string
	// sent is the origin's clock when it published, Unix nanoseconds; 0
	// when unknown (version 1, or not stamped).
	sent   int64
	seq    uint64
	from   string
	event  string
	binary bool
	// ext is the extension area, raw, when flag bit 1 was set.
	ext string
	// pos is the history position of record tag 1; zero without one.
	pos     pubsub.Position
	payload string
}

var (
	errEnvelopeShort    = errors.New("redis: envelope: truncated")
	errEnvelopeVersion  = errors.New("redis: envelope: unknown version")
	errEnvelopeFlags    = errors.New("redis: envelope: unknown flags")
	errEnvelopeTooLarge = errors.New("redis: envelope: above the maximum message size")
	errEnvelopeExt      = errors.New("redis: envelope: malformed extension area")
	errEnvelopeText     = errors.New("redis: envelope: topic or event not UTF-8")
	errEnvelopeJSON     = errors.New("redis: envelope: text payload not valid JSON in UTF-8")
)

// deliverable checks what a subscriber would write into a frame: the
// topic and event are UTF-8, and a text payload is valid JSON in UTF-8
// (json.Valid alone accepts invalid UTF-8 inside strings). An empty text
// payload is allowed: the serializers write it as {}.
func (e *envelope) deliverable(topic string, payload []byte) error {
	if !utf8.ValidString(topic) || !utf8.ValidString(e.event) {
		return errEnvelopeText
	}
	if !e.binary && len(payload) > 0 && (!utf8.Valid(payload) || !json.Valid(payload)) {
		return errEnvelopeJSON
	}
	return nil
}

// appendEnvelope appends the (version 2) encoding of one broadcast, sent
// at sent (Unix nanoseconds, 0 for unknown), to dst: the floor's form,
// which every release reads.
func appendEnvelope(dst []byte, origin string, sent int64, seq uint64, from, event string, bin bool, payload []byte) []byte {
	return appendEnvelopeExt(dst, origin, sent, seq, from, event, bin, nil, payload)
}

// appendEnvelopeExt is appendEnvelope with an extension area when ext is
// not nil (gated: form "envelope" at level 3). The history script builds
// the same bytes from appendEnvelopeHead's; tests use this one.
func appendEnvelopeExt(dst []byte, origin string, sent int64, seq uint64, from, event string, bin bool, ext, payload []byte) []byte {
	dst = appendHead(dst, origin, sent, seq, from, event, bin, ext != nil)
	if ext != nil {
		dst = appendString(dst, string(ext))
	}
	return append(dst, payload...)
}

// appendEnvelopeHead appends the envelope up to and including the event,
// with flag bit 1 set: the history script (history_script.go) appends the
// extension area holding the position and the payload, or clears the
// flag and appends the payload alone (the floor's form).
func appendEnvelopeHead(dst []byte, origin string, sent int64, seq uint64, from, event string, bin bool) []byte {
	return appendHead(dst, origin, sent, seq, from, event, bin, true)
}

func appendHead(dst []byte, origin string, sent int64, seq uint64, from, event string, bin, ext bool) []byte {
	flags := byte(0)
	if bin {
		flags |= flagBinary
	}
	if ext {
		flags |= flagExt
	}
	dst = append(dst, envelopeVersion, flags)
	dst = binary.BigEndian.AppendUint64(dst, uint64(sent))
	dst = appendString(dst, origin)
	dst = binary.AppendUvarint(dst, seq)
	dst = appendString(dst, from)
	return appendString(dst, event)
}

// positionExt is the extension area holding only pos's record, as the
// history script writes it.
func positionExt(pos pubsub.Position) []byte {
	return appendExtRecord(nil, extTagPosition, []byte(pos.String()))
}

// appendExtRecord appends one record of an extension area.
func appendExtRecord(dst []byte, tag uint64, value []byte) []byte {
	dst = binary.AppendUvarint(dst, tag)
	dst = binary.AppendUvarint(dst, uint64(len(value)))
	return append(dst, value...)
}

// parseExt checks that an extension area is a sequence of whole records,
// so that a later reader that knows some tags finds them where the writer
// put them, and reads the records this release knows.
func parseExt(ext string, e *envelope) bool {
	for ext != "" {
		var (
			tag uint64
			val string
			ok  bool
		)
		if tag, ext, ok = readUvarint(ext); !ok {
			return false
		}
		if val, ext, ok = readString(ext); !ok {
			return false
		}
		if tag == extTagPosition {
			pos, err := pubsub.ParsePosition(val)
			if err != nil || pos.Offset == 0 || !e.pos.IsZero() {
				return false
			}
			e.pos = pos
		}
	}
	return true
}

// validExt checks that an extension area is a sequence of whole records
// (call frames' areas, whose tags this release knows none of).
func validExt(ext string) bool {
	for ext != "" {
		var ok bool
		if _, ext, ok = readUvarint(ext); !ok {
			return false
		}
		if _, ext, ok = readString(ext); !ok {
			return false
		}
	}
	return true
}

func envelopeSize(origin, from, event string, payload []byte) int {
	return 2 + 8 + 4*binary.MaxVarintLen64 + len(origin) + len(from) + len(event) + len(payload)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeEnvelope parses data as go-redis hands it over (a string). The
// envelope's strings are substrings of data: no copies.
func decodeEnvelope(data string) (envelope, error) {
	var e envelope
	if len(data) < 2 {
		return e, errEnvelopeShort
	}
	version := data[0]
	if version != envelopeVersion && version != envelopeVersionV1 {
		return e, errEnvelopeVersion
	}
	if data[1]&^(flagBinary|flagExt) != 0 {
		return e, errEnvelopeFlags
	}
	e.binary = data[1]&flagBinary != 0
	r := data[2:]
	if version == envelopeVersion {
		if len(r) < 8 {
			return e, errEnvelopeShort
		}
		e.sent = int64(uint64(r[0])<<56 | uint64(r[1])<<48 | uint64(r[2])<<40 | uint64(r[3])<<32 |
			uint64(r[4])<<24 | uint64(r[5])<<16 | uint64(r[6])<<8 | uint64(r[7]))
		r = r[8:]
	}
	var ok bool
	if e.origin, r, ok = readString(r); !ok {
		return e, errEnvelopeShort
	}
	if e.seq, r, ok = readUvarint(r); !ok {
		return e, errEnvelopeShort
	}
	if e.from, r, ok = readString(r); !ok {
		return e, errEnvelopeShort
	}
	if e.event, r, ok = readString(r); !ok {
		return e, errEnvelopeShort
	}
	if data[1]&flagExt != 0 {
		if e.ext, r, ok = readString(r); !ok {
			return e, errEnvelopeShort
		}
		if !parseExt(e.ext, &e) {
			return e, errEnvelopeExt
		}
	}
	e.payload = r
	return e, nil
}

// readUvarint is binary.Uvarint over a string.
func readUvarint(s string) (uint64, string, bool) {
	var x uint64
	var shift uint
	for i := 0; i < len(s) && i < binary.MaxVarintLen64; i++ {
		b := s[i]
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				return 0, s, false // overflows uint64
			}
			return x | uint64(b)<<shift, s[i+1:], true
		}
		x |= uint64(b&0x7f) << shift
		shift += 7
	}
	return 0, s, false
}

func readString(s string) (string, string, bool) {
	n, r, ok := readUvarint(s)
	if !ok || n > uint64(len(r)) {
		return "", s, false
	}
	return r[:n], r[n:], true
}
