package channels

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/channelsd/channelsd/pubsub"
)

// The fuzz targets check the hand-written decoders against reference
// decoders built on encoding/json (same verdict, same fields; text that is
// not UTF-8 refused), that whatever decodes re-encodes to something that
// decodes to the same Message, and that whatever decodes can be relayed:
// every text frame it becomes is valid UTF-8 and valid JSON.

func addTextSeeds(f *testing.F) {
	for _, tt := range decodeTests {
		f.Add([]byte(tt.in))
	}
	for _, tt := range malformedTests {
		if !tt.binary {
			f.Add([]byte(tt.in))
		}
	}
	for _, tt := range encodeTests {
		f.Add([]byte(tt.want))
	}
	for _, s := range protocolFrames {
		f.Add([]byte(s))
	}
	// Broadcasts of topics with history (PROTOCOL.md §12).
	f.Add([]byte(`{"event":"new_msg","payload":{"body":"hi"},"ref":"e-1_Z:42","topic":"room:lobby"}`))
	f.Add([]byte(`[null,"e-1_Z:42","room:lobby","new_msg",{"body":"hi"}]`))
	f.Add([]byte(`[null,"x:18446744073709551615","room:lobby","\"é:","{}"]`))
	for _, s := range wireValidInputs {
		if len(s) < 1000 {
			f.Add([]byte(s))
		}
	}
}

// refUnwrapReply is wireUnwrapReply written with encoding/json.
func refUnwrapReply(m *Message) {
	if m.Event != EventReply {
		return
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(m.Payload, &obj) != nil {
		return
	}
	status, okS := obj["status"]
	response, okR := obj["response"]
	if !okS || !okR || status[0] != '"' {
		return
	}
	if json.Unmarshal(status, &m.Status) != nil {
		panic("unreachable")
	}
	m.Payload = response
}

// refString decodes a JSON string, refusing other types (json.Unmarshal
// would quietly accept null).
func refString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// refVerdict is what the reference decoders make of a frame.
type refVerdict int

const (
	refRefused    refVerdict = iota // not a message
	refOK                           // a message
	refBadHeader                    // a message, but a header field is not UTF-8
	refBadPayload                   // a message whose payload only is not UTF-8
)

// refUTF8 gives the verdict on a message encoding/json decoded from the
// raw header fields and payload.
func refUTF8(m *Message, payload []byte, header ...[]byte) refVerdict {
	for _, h := range header {
		if !utf8.Valid(h) {
			*m = Message{}
			return refBadHeader
		}
	}
	if !utf8.Valid(payload) {
		m.Payload, m.Status = nil, ""
		return refBadPayload
	}
	m.Payload = payload
	refUnwrapReply(m)
	return refOK
}

// refDecodeV2 is the V2 text decoder written with encoding/json.
func refDecodeV2(data []byte) (Message, refVerdict) {
	var arr []json.RawMessage
	if json.Unmarshal(data, &arr) != nil || len(arr) < 5 {
		return Message{}, refRefused
	}
	var m Message
	var err1, err2 error
	var ok1, ok2 bool
	m.JoinRef, err1 = refFromJSON(arr[0])
	m.Ref, err2 = refFromJSON(arr[1])
	m.Topic, ok1 = refString(arr[2])
	m.Event, ok2 = refString(arr[3])
	if err1 != nil || err2 != nil || !ok1 || !ok2 {
		return Message{}, refRefused
	}
	v := refUTF8(&m, arr[4], arr[0], arr[1], arr[2], arr[3])
	return m, v
}

// refDecodeV1 is the V1 decoder written with encoding/json.
func refDecodeV1(data []byte) (Message, refVerdict) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) != nil || obj == nil {
		return Message{}, refRefused
	}
	topic, ok1 := obj["topic"]
	event, ok2 := obj["event"]
	payload, ok3 := obj["payload"]
	ref, ok4 := obj["ref"]
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return Message{}, refRefused
	}
	var m Message
	var err error
	if m.Topic, ok1 = refString(topic); !ok1 {
		return Message{}, refRefused
	}
	if m.Event, ok2 = refString(event); !ok2 {
		return Message{}, refRefused
	}
	if m.Ref, err = refFromJSON(ref); err != nil {
		return Message{}, refRefused
	}
	jr := obj["join_ref"] // nil when absent: valid UTF-8
	if jr != nil {
		if m.JoinRef, err = refFromJSON(jr); err != nil {
			return Message{}, refRefused
		}
	}
	v := refUTF8(&m, payload, topic, event, ref, jr)
	return m, v
}

// checkDecodeVerdict holds a decoder's answer to the reference decoder's
// verdict, and reports whether the message was accepted.
func checkDecodeVerdict(t *testing.T, data []byte, m Message, err error, want Message, v refVerdict) bool {
	t.Helper()
	switch {
	case v == refRefused:
		if err == nil {
			t.Fatalf("Decode(%q) = %+v; encoding/json refuses it", data, m)
		}
		checkDecodeError(t, err)
		return false
	case v == refBadHeader && err != errWireHeaderUTF8:
		t.Fatalf("Decode(%q) = %+v, %v; want %v", data, m, err, errWireHeaderUTF8)
	case v == refBadPayload && err != errWirePayloadUTF8:
		t.Fatalf("Decode(%q) = %+v, %v; want %v", data, m, err, errWirePayloadUTF8)
	case v == refOK && err != nil:
		t.Fatalf("Decode(%q) = %v; encoding/json decodes %+v", data, err, want)
	}
	if v != refBadHeader && !msgEqual(m, want) {
		t.Fatalf("Decode(%q) = %+v\nencoding/json: %+v", data, m, want)
	}
	return v == refOK
}

// checkRelayable is the invariant that keeps browser subscribers
// connected: whatever Decode accepts encodes, as a reply, a push and a
// broadcast, with either serializer, to text frames of valid UTF-8 and
// valid JSON (or, with a binary payload, to V2 binary frames).
func checkRelayable(t *testing.T, m Message) {
	t.Helper()
	for _, ser := range []Serializer{V1, V2} {
		for _, out := range []Message{
			m,
			{JoinRef: m.JoinRef, Ref: m.Ref, Topic: m.Topic, Event: EventReply, Status: "ok", Payload: m.Payload, Binary: m.Binary},
			{JoinRef: m.JoinRef, Topic: m.Topic, Event: m.Event, Payload: m.Payload, Binary: m.Binary},
		} {
			f, err := ser.Encode(nil, &out)
			if m.Binary && ser == V1 {
				if !errors.Is(err, ErrBinaryUnsupported) {
					t.Fatalf("V1 Encode of a binary payload: %v", err)
				}
				continue
			}
			if errors.Is(err, ErrFieldTooLong) && m.Binary {
				continue
			}
			if err != nil {
				t.Fatalf("%s: Encode(%+v) of an accepted message: %v", ser.Vsn(), out, err)
			}
			checkFrameText(t, ser, f.Data, f.Binary)
		}
		data, binary, err := ser.EncodeBroadcast(&pubsub.Message{Topic: m.Topic, Event: m.Event, Payload: m.Payload, Binary: m.Binary})
		switch {
		case m.Binary && ser == V1:
			if !errors.Is(err, ErrBinaryUnsupported) {
				t.Fatalf("V1 EncodeBroadcast of a binary payload: %v", err)
			}
		case errors.Is(err, ErrFieldTooLong) && m.Binary:
		case err != nil:
			t.Fatalf("%s: EncodeBroadcast(%+v) of an accepted message: %v", ser.Vsn(), m, err)
		default:
			checkFrameText(t, ser, data, binary)
		}
		// The same broadcast with a history position: the position is
		// the ref of a text frame (PROTOCOL.md §12), whatever its epoch
		// holds (a foreign store's), and a binary frame is unchanged.
		pos := pubsub.Position{Epoch: m.Event, Offset: uint64(len(m.Payload)) << 40}
		if pos.IsZero() {
			continue
		}
		pdata, pbinary, perr := ser.EncodeBroadcast(&pubsub.Message{Topic: m.Topic, Event: m.Event, Payload: m.Payload, Binary: m.Binary, Pos: pos})
		if (perr == nil) != (err == nil) {
			t.Fatalf("%s: EncodeBroadcast with a position: %v, without: %v", ser.Vsn(), perr, err)
		}
		if perr != nil {
			continue
		}
		if pbinary {
			if !bytes.Equal(pdata, data) {
				t.Fatalf("binary broadcast with a position = % x, without % x", pdata, data)
			}
			continue
		}
		checkFrameText(t, ser, pdata, pbinary)
		got, err := ser.Decode(pdata, false)
		if err != nil || got.Ref.Text() != pos.String() || got.Topic != m.Topic || got.Event != m.Event {
			t.Fatalf("%s: broadcast at %q encoded as %q, decoded to %+v, %v", ser.Vsn(), pos, pdata, got, err)
		}
	}
}

func checkFrameText(t *testing.T, ser Serializer, data []byte, binary bool) {
	t.Helper()
	if binary {
		if ser != V2 {
			t.Fatalf("%s: binary frame % x", ser.Vsn(), data)
		}
		return
	}
	if !utf8.Valid(data) || !json.Valid(data) {
		t.Fatalf("%s: text frame %q: invalid UTF-8 or JSON", ser.Vsn(), data)
	}
	if _, err := ser.Decode(data, false); err != nil {
		t.Fatalf("%s: text frame %q does not decode: %v", ser.Vsn(), data, err)
	}
}

// checkTextRoundTrip encodes m with ser and decodes it again; the result
// must be m, except that V1 drops join_ref and that a reply whose payload
// could not be unwrapped gets wrapped once more (after which it is stable).
func checkTextRoundTrip(t *testing.T, ser Serializer, m Message) {
	t.Helper()
	f, err := ser.Encode(nil, &m)
	if err != nil {
		t.Fatalf("%s: Encode(%+v): %v", ser.Vsn(), m, err)
	}
	if f.Binary || !json.Valid(f.Data) {
		t.Fatalf("%s: Encode(%+v) = %q: not a valid JSON text frame", ser.Vsn(), m, f.Data)
	}
	if !utf8.Valid(f.Data) {
		t.Fatalf("%s: Encode(%+v) = %q: invalid UTF-8", ser.Vsn(), m, f.Data)
	}
	got, err := ser.Decode(f.Data, false)
	if err != nil {
		t.Fatalf("%s: Decode(Encode(%+v)) = %v", ser.Vsn(), m, err)
	}
	want := m
	if ser == V1 {
		want.JoinRef = NullRef
	}
	// Strings from binary frames may hold invalid UTF-8, which JSON text
	// carries as U+FFFD.
	want.Topic, want.Event, want.Status = jsonNormal(m.Topic), jsonNormal(m.Event), jsonNormal(m.Status)
	if want.Event == EventReply && want.Status == "" {
		// Encode wrapped what could not be unwrapped; wrapping is now
		// undone by Decode.
		want.Status = "ok"
	}
	if !msgEqual(got, want) {
		t.Fatalf("%s: %+v encoded to %s decoded to %+v", ser.Vsn(), m, f.Data, got)
	}
}

// jsonNormal is s after a trip through encoding/json.
func jsonNormal(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	b, _ := json.Marshal(s)
	var back string
	if err := json.Unmarshal(b, &back); err != nil {
		panic(err)
	}
	return back
}

// checkBinaryRoundTrip sends m's refs, topic and event through a client
// binary push, when they fit.
func checkBinaryRoundTrip(t *testing.T, m Message) {
	t.Helper()
	jr, ref := m.JoinRef.Text(), m.Ref.Text()
	if len(jr) > 255 || len(ref) > 255 || len(m.Topic) > 255 || len(m.Event) > 255 {
		return
	}
	f, err := EncodeClientBinary(nil, &m)
	if err != nil {
		t.Fatalf("EncodeClientBinary(%+v): %v", m, err)
	}
	got, err := V2.Decode(f.Data, true)
	if err != nil {
		t.Fatalf("Decode(EncodeClientBinary(%+v)): %v", m, err)
	}
	want := Message{JoinRef: StringRef(jr), Ref: StringRef(ref), Topic: m.Topic, Event: m.Event, Payload: m.Payload, Binary: true}
	if !msgEqual(got, want) {
		t.Fatalf("binary round trip of %+v gave %+v", m, got)
	}
}

func checkDecodeError(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) || !strings.HasPrefix(err.Error(), "channels: ") {
		t.Fatalf("error %v does not wrap ErrMalformed", err)
	}
}

func checkValid(t *testing.T, data []byte) {
	t.Helper()
	if got, want := wireValid(data), json.Valid(data); got != want {
		t.Fatalf("wireValid(%q) = %v, json.Valid says %v", data, got, want)
	}
}

func FuzzV1Decode(f *testing.F) {
	addTextSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		checkValid(t, data)
		m, err := V1.Decode(data, false)
		want, verdict := refDecodeV1(data)
		if !checkDecodeVerdict(t, data, m, err, want, verdict) {
			return
		}
		checkRelayable(t, m)
		checkTextRoundTrip(t, V1, m)
		checkTextRoundTrip(t, V2, m)
		checkBinaryRoundTrip(t, m)
	})
}

func FuzzV2Decode(f *testing.F) {
	addTextSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		checkValid(t, data)
		m, err := V2.Decode(data, false)
		want, verdict := refDecodeV2(data)
		if !checkDecodeVerdict(t, data, m, err, want, verdict) {
			return
		}
		checkRelayable(t, m)
		checkTextRoundTrip(t, V2, m)
		checkTextRoundTrip(t, V1, m)
		checkBinaryRoundTrip(t, m)
	})
}

func FuzzV2DecodeBinary(f *testing.F) {
	for _, h := range []string{hexClientPush, hexServerPush, hexReply, hexBroadcast} {
		f.Add(unhex(f, h))
	}
	for _, tt := range malformedTests {
		if tt.binary {
			f.Add([]byte(tt.in))
		}
	}
	f.Add([]byte("\x00\x00\x00\x00\x00"))
	f.Add([]byte("\x00\x02\x01\x01\x01\xff\xfe\x22tep"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzClientBinary(t, data)
		fuzzServerBinary(t, data)
	})
}

// fuzzClientBinary checks Decode of a client push against the layout of
// §2.4 and EncodeClientBinary against the input bytes.
func fuzzClientBinary(t *testing.T, data []byte) {
	m, err := V2.Decode(data, true)
	ok := len(data) >= 5 && data[0] == 0 && len(data) >= 5+int(data[1])+int(data[2])+int(data[3])+int(data[4])
	if ok && !utf8.Valid(data[5:5+int(data[1])+int(data[2])+int(data[3])+int(data[4])]) {
		if err != errWireHeaderUTF8 {
			t.Fatalf("Decode(% x) = %+v, %v; want %v", data, m, err, errWireHeaderUTF8)
		}
		return
	}
	if err != nil {
		checkDecodeError(t, err)
		if ok {
			t.Fatalf("Decode(% x): %v", data, err)
		}
		return
	}
	if !ok {
		t.Fatalf("Decode(% x) = %+v, want an error", data, m)
	}
	checkRelayable(t, m)
	o := 5
	field := func(n byte) []byte {
		b := data[o : o+int(n)]
		o += int(n)
		return b
	}
	jr, ref, topic, event := field(data[1]), field(data[2]), field(data[3]), field(data[4])
	want := Message{
		JoinRef: StringRef(string(jr)), Ref: StringRef(string(ref)),
		Topic: string(topic), Event: string(event), Payload: data[o:], Binary: true,
	}
	if !msgEqual(m, want) {
		t.Fatalf("Decode(% x) = %+v\nwant %+v", data, m, want)
	}
	if utf8.Valid(jr) && utf8.Valid(ref) {
		if m.JoinRef.Text() != string(jr) || m.Ref.Text() != string(ref) {
			t.Fatalf("Decode(% x): refs %s %s lose their text", data, m.JoinRef, m.Ref)
		}
		f, err := EncodeClientBinary(nil, &m)
		if err != nil || !bytes.Equal(f.Data, data) {
			t.Fatalf("EncodeClientBinary(Decode(% x)) = % x, %v", data, f.Data, err)
		}
	}
	// Replying echoes the refs in either form.
	reply := Message{JoinRef: m.JoinRef, Ref: m.Ref, Topic: m.Topic, Event: EventReply, Payload: []byte(`{}`)}
	checkTextRoundTrip(t, V2, reply)
	checkTextRoundTrip(t, V1, reply)
	reply.Binary = true
	f, err := V2.Encode(nil, &reply)
	if err != nil {
		if errors.Is(err, ErrFieldTooLong) { // invalid UTF-8 grows into U+FFFD
			return
		}
		t.Fatalf("binary reply to % x: %v", data, err)
	}
	back, err := DecodeServerBinary(f.Data)
	if err != nil || back.JoinRef.Text() != m.JoinRef.Text() || back.Ref.Text() != m.Ref.Text() || back.Topic != m.Topic || back.Status != "ok" {
		t.Fatalf("binary reply to % x decoded to %+v, %v", data, back, err)
	}
}

// fuzzServerBinary checks DecodeServerBinary against Encode: a decoded
// server frame encodes back to the same bytes.
func fuzzServerBinary(t *testing.T, data []byte) {
	m, err := DecodeServerBinary(data)
	if err != nil {
		checkDecodeError(t, err)
		return
	}
	if !m.Binary {
		t.Fatalf("DecodeServerBinary(% x) = %+v: not binary", data, m)
	}
	switch {
	case data[0] == wireKindReply && m.Status == "":
		return // encodes as "ok"
	case data[0] == wireKindPush && m.Event == EventReply:
		return // encodes as a reply
	}
	if strings.ContainsRune(m.JoinRef.Text()+m.Ref.Text(), utf8.RuneError) {
		return // replacement characters from invalid bytes
	}
	f, err := V2.Encode(nil, &m)
	if err != nil || !f.Binary || !bytes.Equal(f.Data, data) {
		t.Fatalf("Encode(DecodeServerBinary(% x) = %+v) = % x, %v", data, m, f.Data, err)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "room:lobby", `a"b\c`, "\x00\x1f\x7f", "héllo ✓ 😀", "bad\xffutf8", "\xed\xa0\x80", "\u2028<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString([]byte("pre"), s)
		if !bytes.HasPrefix(out, []byte("pre")) {
			t.Fatalf("dst prefix lost: %q", out)
		}
		out = out[3:]
		if len(out) != jsonStringLen(s) {
			t.Fatalf("appendJSONString(%q) has %d bytes, jsonStringLen says %d", s, len(out), jsonStringLen(s))
		}
		if !json.Valid(out) || !utf8.Valid(out) {
			t.Fatalf("appendJSONString(%q) = %q: invalid JSON or UTF-8", s, out)
		}
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("appendJSONString(%q) = %q: %v", s, out, err)
		}
		if utf8.ValidString(s) && back != s {
			t.Fatalf("appendJSONString(%q) = %q decodes to %q", s, out, back)
		}
		// Invalid bytes become U+FFFD as encoding/json makes them.
		std, _ := json.Marshal(s)
		var stdBack string
		if err := json.Unmarshal(std, &stdBack); err != nil || back != stdBack {
			t.Fatalf("appendJSONString(%q) decodes to %q, encoding/json's to %q", s, back, stdBack)
		}
		if got := wireString(string(out)); got != back {
			t.Fatalf("wireString(%q) = %q, want %q", out, got, back)
		}
		if StringRef(s).Text() != back {
			t.Fatalf("StringRef(%q).Text() = %q, want %q", s, StringRef(s).Text(), back)
		}
		plain := true
		for i := 0; i < len(s); i++ {
			plain = plain && wireJSONSafe[s[i]]
		}
		if plain && string(out) != `"`+s+`"` {
			t.Fatalf("plain %q escaped as %q", s, out)
		}
	})
}
