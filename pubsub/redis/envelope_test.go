package redis

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// appendEnvelopeV1 is the version 1 writer (releases before the send
// time), kept to check that version 1 envelopes are still read.
func appendEnvelopeV1(dst []byte, origin string, seq uint64, from, event string, bin bool, payload []byte) []byte {
	flags := byte(0)
	if bin {
		flags |= flagBinary
	}
	dst = append(dst, envelopeVersionV1, flags)
	dst = appendString(dst, origin)
	dst = binary.AppendUvarint(dst, seq)
	dst = appendString(dst, from)
	dst = appendString(dst, event)
	return append(dst, payload...)
}

func TestEnvelopeRoundTrip(t *testing.T) {
	long := strings.Repeat("é", 300) // lengths past one varint byte
	cases := []struct {
		origin, from, event string
		seq                 uint64
		binary              bool
		payload             []byte
	}{
		{"node-1", "", "new_msg", 1, false, []byte(`{"body":"hi"}`)},
		{"node-1", "socket-7", "phx_reply", 1<<64 - 1, true, []byte{0, 1, 2, 0xff}},
		{"", "", "", 0, false, nil},
		{long, long, long, 300, true, bytes.Repeat([]byte{0}, 70000)},
	}
	sent := time.Now().UnixNano()
	for _, c := range cases {
		for _, v := range []int{1, 2} {
			var data []byte
			want := int64(0)
			if v == 1 {
				data = appendEnvelopeV1(nil, c.origin, c.seq, c.from, c.event, c.binary, c.payload)
			} else {
				data = appendEnvelope(nil, c.origin, sent, c.seq, c.from, c.event, c.binary, c.payload)
				want = sent
				if len(data) > envelopeSize(c.origin, c.from, c.event, c.payload) {
					t.Fatalf("envelopeSize underestimates: %d > %d", len(data), envelopeSize(c.origin, c.from, c.event, c.payload))
				}
			}
			if data[0] != byte(v) {
				t.Fatalf("version byte %d, want %d", data[0], v)
			}
			e, err := decodeEnvelope(string(data))
			if err != nil {
				t.Fatalf("version %d: %v", v, err)
			}
			if e.origin != c.origin || e.from != c.from || e.event != c.event || e.seq != c.seq || e.binary != c.binary || e.payload != string(c.payload) || e.sent != want {
				t.Fatalf("version %d: round trip of %+v gave %+v (sent %d)", v, c, e, want)
			}
		}
	}
	// Any send time survives, including 0 (unknown) and times before 1970.
	for _, sent := range []int64{0, 1, -1, 1<<63 - 1, -1 << 63} {
		e, err := decodeEnvelope(string(appendEnvelope(nil, "n", sent, 1, "", "e", false, nil)))
		if err != nil || e.sent != sent {
			t.Fatalf("send time %d: got %d, %v", sent, e.sent, err)
		}
	}
}

func TestEnvelopeDecodeErrors(t *testing.T) {
	for _, good := range []string{
		string(appendEnvelope(nil, "node", time.Now().UnixNano(), 7, "from", "event", false, []byte("payload"))),
		string(appendEnvelopeV1(nil, "node", 7, "from", "event", false, []byte("payload"))),
	} {
		// Every cut inside the header is an error; cuts inside the payload
		// are (undetectably) a shorter payload.
		header := len(good) - len("payload")
		for i := range header {
			if _, err := decodeEnvelope(good[:i]); err == nil {
				t.Fatalf("version %d truncated to %d bytes: no error", good[0], i)
			}
		}
	}
	for _, bad := range []string{
		"\x00\x00", "\x03\x00", // unknown versions
		"\x01\x02", "\x02\x02", // unknown flags
		"\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",                                 // v1: varint overflow
		"\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", // v2: varint overflow
		"\x02\x00\x00\x00\x00", // v2: send time cut short
	} {
		if _, err := decodeEnvelope(bad); err == nil {
			t.Fatalf("%q: no error", bad)
		}
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(string(appendEnvelope(nil, "node", time.Now().UnixNano(), 7, "from", "event", true, []byte{0, 1})))
	f.Add(string(appendEnvelope(nil, "", 0, 0, "", "", false, nil)))
	f.Add(string(appendEnvelopeV1(nil, "node", 7, "from", "event", true, []byte{0, 1})))
	f.Add("\x01\x00\x80")
	f.Add(string(appendEnvelopeExt(nil, "node", 1, 7, "", "event", false, appendExtRecord(nil, 5, []byte("x")), []byte(`{}`))))
	f.Add("\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80")
	pos := pubsub.Position{Epoch: "e1", Offset: 42}
	f.Add(string(appendEnvelopeExt(nil, "node", 1, 7, "s", "event", false, positionExt(pos), []byte(`{}`))))
	f.Add(string(appendEnvelopeExt(nil, "node", 1, 7, "", "event", true, appendExtRecord(positionExt(pos), 9, nil), []byte{1})))
	f.Add(string(appendEnvelopeExt(nil, "node", 1, 7, "", "event", false, appendExtRecord(nil, 1, []byte("bad")), nil)))
	f.Fuzz(func(t *testing.T, data string) {
		e, err := decodeEnvelope(data)
		if err != nil {
			return
		}
		if data[0] == envelopeVersionV1 && e.sent != 0 {
			t.Fatalf("version 1 envelope decoded with a send time %d", e.sent)
		}
		// Re-encoding writes version 2, which must give back the same
		// envelope (a version 1 one with sent = 0, unknown), its
		// extension area too when written with one.
		again := appendEnvelope(nil, e.origin, e.sent, e.seq, e.from, e.event, e.binary, []byte(e.payload))
		base := e
		base.ext = ""
		base.pos = pubsub.Position{}
		if e2, err := decodeEnvelope(string(again)); err != nil || e2 != base {
			t.Fatalf("re-encoding %+v gave %+v, %v", e, e2, err)
		}
		again = appendEnvelopeExt(nil, e.origin, e.sent, e.seq, e.from, e.event, e.binary, []byte(e.ext), []byte(e.payload))
		if e4, err := decodeEnvelope(string(again)); err != nil || e4 != e {
			t.Fatalf("re-encoding %+v with its extension area gave %+v, %v", e, e4, err)
		}
		if data[0] == envelopeVersionV1 {
			v1 := appendEnvelopeV1(nil, e.origin, e.seq, e.from, e.event, e.binary, []byte(e.payload))
			if e3, err := decodeEnvelope(string(v1)); err != nil || e3 != base {
				t.Fatalf("re-encoding %+v as version 1 gave %+v, %v", e, e3, err)
			}
		}
	})
}

// TestEnvelopeReadsNextReleaseExtensionArea is "release N reads what
// N+1 writes": an envelope carrying an extension area (flag bit 1, with
// records of tags this release does not know) decodes to the same
// message, payload untouched, binary or text.
func TestEnvelopeReadsNextReleaseExtensionArea(t *testing.T) {
	var ext []byte
	ext = appendExtRecord(ext, 2, []byte("trace-4bf92f3577b34da6"))
	ext = appendExtRecord(ext, 300, nil)
	ext = appendExtRecord(ext, 7, bytes.Repeat([]byte{0xff}, 200))
	sent := time.Now().UnixNano()
	for _, bin := range []bool{false, true} {
		for _, x := range [][]byte{nil, ext} {
			payload := []byte(`{"body":"hi"}`)
			data := appendEnvelopeExt(nil, "node-9", sent, 42, "sock-1", "new_msg", bin, x, payload)
			e, err := decodeEnvelope(string(data))
			if err != nil {
				t.Fatalf("binary=%v ext=%d bytes: %v", bin, len(x), err)
			}
			if e.origin != "node-9" || e.seq != 42 || e.from != "sock-1" || e.event != "new_msg" || e.binary != bin || e.sent != sent || e.payload != string(payload) || e.ext != string(x) {
				t.Fatalf("binary=%v: decoded %+v", bin, e)
			}
		}
	}
}

// TestEnvelopeDefaultFormIsTheFloors pins what goes on the wire by
// default: version 2, no flag but the binary one, exactly the bytes the
// release of b847059 reads. Setting the extension flag without the Gate
// would make every node of that release drop the message.
func TestEnvelopeDefaultFormIsTheFloors(t *testing.T) {
	data := appendEnvelope(nil, "n", 1, 2, "", "e", true, []byte{1})
	want := []byte{2, flagBinary, 0, 0, 0, 0, 0, 0, 0, 1, 1, 'n', 2, 0, 1, 'e', 1}
	if !bytes.Equal(data, want) {
		t.Fatalf("default envelope % x, want % x", data, want)
	}
}

func TestEnvelopeMalformedExtensionAreaIsRefused(t *testing.T) {
	for name, ext := range map[string][]byte{
		"record length past the area": {1, 5, 'a'},
		"tag without length":          {1},
		"overlong tag varint":         bytes.Repeat([]byte{0xff}, 11),
	} {
		data := appendEnvelopeExt(nil, "n", 0, 1, "", "e", false, ext, []byte(`{}`))
		if _, err := decodeEnvelope(string(data)); err != errEnvelopeExt {
			t.Errorf("%s: err %v, want errEnvelopeExt", name, err)
		}
	}
	// An area longer than what follows the event is a truncation.
	data := appendEnvelope(nil, "n", 0, 1, "", "e", false, nil)
	data[1] |= flagExt
	data = append(data, 9)
	if _, err := decodeEnvelope(string(data)); err != errEnvelopeShort {
		t.Errorf("area past the end: err %v, want errEnvelopeShort", err)
	}
	// Flag bits this release does not know stay refused.
	data = appendEnvelope(nil, "n", 0, 1, "", "e", false, nil)
	data[1] |= 1 << 2
	if _, err := decodeEnvelope(string(data)); err != errEnvelopeFlags {
		t.Errorf("flag bit 2: err %v, want errEnvelopeFlags", err)
	}
}

// TestEnvelopePositionRecord: record tag 1 is read into the envelope's
// position, next to records of unknown tags; a tag 1 that is not a
// broadcast's position makes the area malformed.
func TestEnvelopePositionRecord(t *testing.T) {
	pos := pubsub.Position{Epoch: strings.Repeat("e", 32), Offset: 1<<64 - 1}
	if ext := positionExt(pos); len(ext) != maxPositionExt-1 {
		t.Fatalf("longest position record is %d bytes, want %d", len(ext), maxPositionExt-1)
	}
	for _, ext := range [][]byte{
		positionExt(pos),
		appendExtRecord(appendExtRecord(nil, 9, []byte("x")), 1, []byte(pos.String())),
		appendExtRecord(positionExt(pos), 300, nil),
	} {
		data := appendEnvelopeExt(nil, "n", 1, 2, "", "e", false, ext, []byte(`{}`))
		e, err := decodeEnvelope(string(data))
		if err != nil || e.pos != pos || e.payload != `{}` {
			t.Fatalf("area % x: %+v, %v", ext, e, err)
		}
	}
	for _, bad := range []string{"", "e", "e:0", ":1", "e:01", "e:x"} {
		data := appendEnvelopeExt(nil, "n", 1, 2, "", "e", false, appendExtRecord(nil, 1, []byte(bad)), nil)
		if _, err := decodeEnvelope(string(data)); err != errEnvelopeExt {
			t.Errorf("position %q: err %v, want errEnvelopeExt", bad, err)
		}
	}
	twice := appendExtRecord(positionExt(pos), 1, []byte("e:2"))
	if _, err := decodeEnvelope(string(appendEnvelopeExt(nil, "n", 1, 2, "", "e", false, twice, nil))); err != errEnvelopeExt {
		t.Errorf("two positions: err %v, want errEnvelopeExt", err)
	}
	// The head the script completes is the envelope up to the event, with
	// flag bit 1 set.
	head := appendEnvelopeHead(nil, "n", 1, 2, "f", "e", true)
	full := appendEnvelopeExt(nil, "n", 1, 2, "f", "e", true, positionExt(pos), []byte{7})
	if !bytes.HasPrefix(full, head) || full[len(head)] != byte(maxPositionExt-1) {
		t.Fatalf("head % x is not the prefix of % x", head, full)
	}
}
