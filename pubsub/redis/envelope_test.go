package redis

import (
	"bytes"
	"strings"
	"testing"
)

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
	for _, c := range cases {
		data := appendEnvelope(nil, c.origin, c.seq, c.from, c.event, c.binary, c.payload)
		if len(data) > envelopeSize(c.origin, c.from, c.event, c.payload) {
			t.Fatalf("envelopeSize underestimates: %d > %d", len(data), envelopeSize(c.origin, c.from, c.event, c.payload))
		}
		e, err := decodeEnvelope(string(data))
		if err != nil {
			t.Fatal(err)
		}
		if e.origin != c.origin || e.from != c.from || e.event != c.event || e.seq != c.seq || e.binary != c.binary || e.payload != string(c.payload) {
			t.Fatalf("round trip of %+v gave %+v", c, e)
		}
	}
}

func TestEnvelopeDecodeErrors(t *testing.T) {
	good := string(appendEnvelope(nil, "node", 7, "from", "event", false, []byte("payload")))
	// Every cut inside the header is an error; cuts inside the payload
	// are (undetectably) a shorter payload.
	header := len(good) - len("payload")
	for i := range header {
		if _, err := decodeEnvelope(good[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", i)
		}
	}
	for _, bad := range []string{"\x02\x00", "\x01\x02", "\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"} {
		if _, err := decodeEnvelope(bad); err == nil {
			t.Fatalf("%q: no error", bad)
		}
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(string(appendEnvelope(nil, "node", 7, "from", "event", true, []byte{0, 1})))
	f.Add("\x01\x00\x80")
	f.Fuzz(func(t *testing.T, data string) {
		e, err := decodeEnvelope(data)
		if err != nil {
			return
		}
		again := appendEnvelope(nil, e.origin, e.seq, e.from, e.event, e.binary, []byte(e.payload))
		e2, err := decodeEnvelope(string(again))
		if err != nil || e2 != e {
			t.Fatalf("re-encoding %+v gave %+v, %v", e, e2, err)
		}
	})
}
