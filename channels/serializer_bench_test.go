package channels

import (
	"testing"

	"github.com/channelsd/channelsd/pubsub"
)

// A chat message of about 100 bytes, the size the fan-out path is tuned
// for.
var benchPayload = []byte(`{"body":"Hello everyone, the deploy finished without errors.","user":"ann","id":1742,"ts":1718000000}`)

var benchMsg = Message{
	JoinRef: `"12"`,
	Ref:     `"345"`,
	Topic:   "room:lobby",
	Event:   "new_msg",
	Payload: benchPayload,
}

func benchEncode(b *testing.B, ser Serializer, m *Message) {
	b.ReportAllocs()
	buf := make([]byte, 0, 512)
	f, err := ser.Encode(buf, m)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(f.Data)))
	for b.Loop() {
		// Into a reused buffer, as a transport with a write buffer does;
		// BenchmarkEncodeBroadcast covers the allocating path.
		f, _ = ser.Encode(buf[:0], m)
	}
	_ = f
}

func BenchmarkV1Encode(b *testing.B) { benchEncode(b, V1, &benchMsg) }
func BenchmarkV2Encode(b *testing.B) { benchEncode(b, V2, &benchMsg) }

// The runtime's own pushes and replies skip Encode's check of payload and
// refs, which their parts have passed already (encodeChecked).
func BenchmarkV1EncodeRuntime(b *testing.B) { benchEncode(b, runtimeSerializer{V1}, &benchMsg) }
func BenchmarkV2EncodeRuntime(b *testing.B) { benchEncode(b, runtimeSerializer{V2}, &benchMsg) }

type runtimeSerializer struct{ Serializer }

func (r runtimeSerializer) Encode(dst []byte, m *Message) (Frame, error) {
	return encodeChecked(r.Serializer, dst, m)
}

func BenchmarkV2EncodeReply(b *testing.B) {
	m := benchMsg
	m.Event, m.Status, m.Payload = EventReply, "ok", []byte(`{"id":1742}`)
	benchEncode(b, V2, &m)
}

func BenchmarkV2EncodeBinary(b *testing.B) {
	m := benchMsg
	m.Ref, m.Binary = NullRef, true
	benchEncode(b, V2, &m)
}

func benchDecode(b *testing.B, ser Serializer, data []byte, binary bool) {
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	if _, err := ser.Decode(data, binary); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		_, _ = ser.Decode(data, binary)
	}
}

func BenchmarkV1Decode(b *testing.B) {
	// phoenix.js key order.
	benchDecode(b, V1, []byte(`{"topic":"room:lobby","event":"new_msg","payload":`+string(benchPayload)+`,"ref":"345","join_ref":"12"}`), false)
}

func BenchmarkV2Decode(b *testing.B) {
	benchDecode(b, V2, []byte(`["12","345","room:lobby","new_msg",`+string(benchPayload)+`]`), false)
}

func BenchmarkV2DecodeBinary(b *testing.B) {
	m := benchMsg
	f, err := EncodeClientBinary(nil, &m)
	if err != nil {
		b.Fatal(err)
	}
	benchDecode(b, V2, f.Data, true)
}

// benchPos is a position as pubsub/local makes them: a 12-character
// epoch, a six-digit offset.
var benchPos = pubsub.Position{Epoch: "k3Vq9aZx_2-w", Offset: 123456}

func BenchmarkEncodeBroadcast(b *testing.B) {
	for _, tc := range []struct {
		name   string
		ser    Serializer
		binary bool
		pos    pubsub.Position
	}{
		{"V1", V1, false, pubsub.Position{}},
		{"V2", V2, false, pubsub.Position{}},
		{"V2Binary", V2, true, pubsub.Position{}},
		// A topic with history: the position is the ref (PROTOCOL.md §12).
		{"V1Pos", V1, false, benchPos},
		{"V2Pos", V2, false, benchPos},
	} {
		b.Run(tc.name, func(b *testing.B) {
			enc := tc.ser.(pubsub.Encoder)
			m := &pubsub.Message{Topic: "room:lobby", Event: "new_msg", Payload: benchPayload, Binary: tc.binary, Pos: tc.pos}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := enc.EncodeBroadcast(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
