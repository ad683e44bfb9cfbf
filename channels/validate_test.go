package channels

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

func TestValidatePayload(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want error
	}{
		{"", nil},
		{`{}`, nil},
		{`{"a":"é😀\u0000"}`, nil},
		{`"\ud800"`, nil}, // an escaped lone surrogate is valid JSON and ASCII
		{"{\"a\":\"\xff\"}", errPayloadNotUTF8},
		{"{\"a\":\"\xed\xa0\x80\"}", errPayloadNotUTF8}, // a surrogate in UTF-8
		{"{\"a\":\"\xc3\"}", errPayloadNotUTF8},
		{`{"a":}`, errPayloadNotJSON},
		{`{} {}`, errPayloadNotJSON},
	} {
		err := ValidatePayload([]byte(tc.in))
		if err != tc.want {
			t.Errorf("ValidatePayload(%q) = %v, want %v", tc.in, err, tc.want)
		}
		if err != nil && !errors.Is(err, ErrInvalidPayload) {
			t.Errorf("ValidatePayload(%q) = %v: does not wrap ErrInvalidPayload", tc.in, err)
		}
	}
}

// Decode refuses text that is not UTF-8 in every field a frame to another
// socket could carry. For a payload it keeps the header, so that the
// sender can be answered.
func TestDecodeRefusesInvalidUTF8(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ser    Serializer
		in     string
		binary bool
		want   error
		header Message // for errWirePayloadUTF8
	}{
		{"v2 topic", V2, "[null,\"1\",\"room:\xff\",\"e\",{}]", false, errWireHeaderUTF8, Message{}},
		{"v2 event", V2, "[null,\"1\",\"t\",\"\xc3\",{}]", false, errWireHeaderUTF8, Message{}},
		{"v2 join_ref", V2, "[\"\xff\",\"1\",\"t\",\"e\",{}]", false, errWireHeaderUTF8, Message{}},
		{"v2 ref", V2, "[null,\"\xff\",\"t\",\"e\",{}]", false, errWireHeaderUTF8, Message{}},
		{"v2 payload", V2, "[\"3\",\"4\",\"room:1\",\"new_msg\",{\"body\":\"\xff\xfe\"}]", false, errWirePayloadUTF8,
			Message{JoinRef: `"3"`, Ref: `"4"`, Topic: "room:1", Event: "new_msg"}},
		{"v2 payload string", V2, "[null,5,\"t\",\"e\",\"\xed\xa0\x80\"]", false, errWirePayloadUTF8,
			Message{Ref: `5`, Topic: "t", Event: "e"}},
		{"v1 topic", V1, "{\"topic\":\"\xff\",\"event\":\"e\",\"payload\":{},\"ref\":\"1\"}", false, errWireHeaderUTF8, Message{}},
		{"v1 event", V1, "{\"topic\":\"t\",\"event\":\"\xff\",\"payload\":{},\"ref\":\"1\"}", false, errWireHeaderUTF8, Message{}},
		{"v1 ref", V1, "{\"topic\":\"t\",\"event\":\"e\",\"payload\":{},\"ref\":\"\xff\"}", false, errWireHeaderUTF8, Message{}},
		{"v1 join_ref", V1, "{\"topic\":\"t\",\"event\":\"e\",\"payload\":{},\"ref\":\"1\",\"join_ref\":\"\xff\"}", false, errWireHeaderUTF8, Message{}},
		{"v1 payload", V1, "{\"topic\":\"t\",\"event\":\"e\",\"payload\":{\"\xd0\":1},\"ref\":\"1\"}", false, errWirePayloadUTF8,
			Message{Ref: `"1"`, Topic: "t", Event: "e"}},
		{"v2 binary topic", V2, "\x00\x01\x01\x02\x01" + "12" + "t\xff" + "e" + "\xff\xfe", true, errWireHeaderUTF8, Message{}},
		{"v2 binary event", V2, "\x00\x01\x01\x01\x02" + "12" + "t" + "\xc3e" + "{}", true, errWireHeaderUTF8, Message{}},
		{"v2 binary ref", V2, "\x00\x01\x01\x01\x01" + "1\xff" + "t" + "e" + "{}", true, errWireHeaderUTF8, Message{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.ser.Decode([]byte(tc.in), tc.binary)
			if err != tc.want {
				t.Fatalf("Decode = %+v, %v; want %v", m, err, tc.want)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%v does not wrap ErrMalformed", err)
			}
			if tc.want == errWirePayloadUTF8 {
				if !errors.Is(err, ErrInvalidPayload) {
					t.Errorf("%v does not wrap ErrInvalidPayload", err)
				}
				if !msgEqual(m, tc.header) {
					t.Errorf("header = %+v, want %+v", m, tc.header)
				}
			}
		})
	}
}

// The encoders refuse what cannot go in a text frame, whoever built the
// Message; binary payloads are not text and pass.
func TestEncodeRefusesInvalidText(t *testing.T) {
	bad := []Message{
		{Topic: "t", Event: "e", Payload: []byte("{\"a\":\"\xff\"}")},
		{Topic: "t", Event: "e", Payload: []byte(`{"a":`)},
		{Topic: "t", Event: "e", Payload: []byte(`{} []`)},
		{Topic: "t", Event: EventReply, Status: "ok", Payload: []byte("\"\xc3\"")},
		{JoinRef: "\"\xff\"", Topic: "t", Event: "e", Payload: []byte(`{}`)},
		{Ref: `"1`, Topic: "t", Event: "e", Payload: []byte(`{}`)},
		{Ref: `"1"x`, Topic: "t", Event: "e", Payload: []byte(`{}`)},
		{Ref: `1.`, Topic: "t", Event: "e", Payload: []byte(`{}`)},
		{Ref: `true`, Topic: "t", Event: "e", Payload: []byte(`{}`)},
	}
	for _, m := range bad {
		for _, ser := range []Serializer{V1, V2} {
			if f, err := ser.Encode(nil, &m); !errors.Is(err, ErrInvalidPayload) {
				t.Errorf("%s: Encode(%+v) = %q, %v; want ErrInvalidPayload", ser.Vsn(), m, f.Data, err)
			}
			if !m.JoinRef.IsNull() || !m.Ref.IsNull() {
				continue
			}
			pm := &pubsub.Message{Topic: m.Topic, Event: m.Event, Payload: m.Payload}
			if data, _, err := ser.EncodeBroadcast(pm); !errors.Is(err, ErrInvalidPayload) {
				t.Errorf("%s: EncodeBroadcast(%+v) = %q, %v; want ErrInvalidPayload", ser.Vsn(), m, data, err)
			}
		}
	}
	good := []Message{
		{JoinRef: `"1"`, Ref: `-2.5e3`, Topic: "t\xff", Event: "e", Payload: []byte(`{"a":"é"}`)},
		{Ref: `"\u00e9\""`, Topic: "t", Event: EventReply, Status: "o\xffk"},
	}
	for _, m := range good {
		for _, ser := range []Serializer{V1, V2} {
			f, err := ser.Encode(nil, &m)
			if err != nil || !utf8.Valid(f.Data) || !json.Valid(f.Data) {
				t.Errorf("%s: Encode(%+v) = %q, %v", ser.Vsn(), m, f.Data, err)
			}
		}
	}
	// A binary payload is bytes, in a binary frame.
	m := Message{JoinRef: `"1"`, Topic: "t", Event: "e", Payload: []byte{0xff, 0xfe}, Binary: true}
	if f, err := V2.Encode(nil, &m); err != nil || !f.Binary {
		t.Errorf("binary Encode = %+v, %v", f, err)
	}
}

// EncodePayload, behind Push, Reply, Broadcast, BroadcastFrom, Track and
// Endpoint.Broadcast, refuses JSON payloads that are not UTF-8 JSON,
// including a json.RawMessage inside a marshalled value.
func TestEncodePayloadValidates(t *testing.T) {
	for _, v := range []any{
		json.RawMessage("{\"a\":\"\xff\"}"),
		json.RawMessage(`{"a"`),
		Payload{Data: []byte("\"\xff\"")},
		Payload{Data: []byte(`nope`)},
		map[string]json.RawMessage{"body": json.RawMessage("\"\xc3\"")},
	} {
		if data, _, err := EncodePayload(v); !errors.Is(err, ErrInvalidPayload) {
			t.Errorf("EncodePayload(%#v) = %q, %v; want ErrInvalidPayload", v, data, err)
		}
	}
	for _, v := range []any{nil, json.RawMessage(nil), json.RawMessage(`[1]`), Binary{0xff}, Payload{Data: []byte{0xff}, Binary: true}, map[string]string{"a": "\xff"}} {
		data, binary, err := EncodePayload(v)
		if err != nil {
			t.Errorf("EncodePayload(%#v): %v", v, err)
		}
		if !binary && !utf8.Valid(data) {
			t.Errorf("EncodePayload(%#v) = %q: invalid UTF-8", v, data)
		}
	}
}

// relayChannel relays what a client pushes to every subscriber, payload
// untouched, as chat rooms do.
type relayChannel struct{}

func (relayChannel) Join(*ChannelSocket, Payload) (any, error) { return nil, nil }
func (relayChannel) HandleIn(s *ChannelSocket, in In) Result {
	if in.Event == "reply_bad_ref" {
		for _, r := range []Ref{"\"\xff\"", "x", `"1`} {
			if err := s.Reply(r, "ok", nil); !errors.Is(err, ErrInvalidPayload) {
				return ErrorReply(map[string]string{"reason": fmt.Sprintf("Reply(%q) = %v", r, err)})
			}
		}
		if err := s.Track("\xff", nil); !errors.Is(err, ErrInvalidPayload) {
			return ErrorReply(map[string]string{"reason": fmt.Sprintf("Track = %v", err)})
		}
		if err := s.Track("ok", json.RawMessage("{\"a\":\"\xff\"}")); !errors.Is(err, ErrInvalidPayload) {
			return ErrorReply(map[string]string{"reason": fmt.Sprintf("Track with a bad meta = %v", err)})
		}
		return Ok(nil)
	}
	if err := s.Broadcast(in.Event, in.Payload); err != nil {
		return ErrorReply(map[string]string{"reason": err.Error()})
	}
	return Ok(nil)
}
func (relayChannel) Terminate(*ChannelSocket, Reason) {}

// recConn records what a socket is sent.
type recConn struct {
	mu     sync.Mutex
	frames []Frame
	closed int
}

func (c *recConn) Send(f Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frames = append(c.frames, f)
	return nil
}

func (c *recConn) Close(code int, _ string) {
	c.mu.Lock()
	c.closed = code
	c.mu.Unlock()
}

func (c *recConn) take() []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.frames
	c.frames = nil
	return f
}

type testEnv struct {
	ep *Endpoint
	ps *local.PubSub
}

func newTestEnv(t testing.TB, cfg EndpointConfig) *testEnv {
	t.Helper()
	ps := local.New()
	tracker := presence.NewLocal(ps)
	if cfg.Router == nil {
		cfg.Router = &Router{}
		cfg.Router.Handle("room:*", func(string) Channel { return relayChannel{} })
	}
	cfg.PubSub, cfg.Presence = ps, tracker
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ep, err := NewEndpoint(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tracker.Close()
		_ = ps.Close()
	})
	return &testEnv{ep: ep, ps: ps}
}

func (e *testEnv) open(t testing.TB, ser Serializer) (*Socket, *recConn) {
	conn := &recConn{}
	s := e.ep.Runtime().Open(conn, ser, Identity{})
	t.Cleanup(s.handleClose)
	return s, conn
}

// checkTextFrames fails on a text frame that is not valid UTF-8 or not
// valid JSON of ser's shape, and returns the frames decoded.
func checkTextFrames(t *testing.T, ser Serializer, frames []Frame) []Message {
	t.Helper()
	var out []Message
	for _, f := range frames {
		if f.Binary {
			m, err := DecodeServerBinary(f.Data)
			if err != nil {
				t.Fatalf("bad binary frame % x: %v", f.Data, err)
			}
			out = append(out, m)
			continue
		}
		if !utf8.Valid(f.Data) {
			t.Fatalf("%s: text frame %q is not valid UTF-8", ser.Vsn(), f.Data)
		}
		// A server frame decodes as a client frame of the same version.
		m, err := ser.Decode(f.Data, false)
		if err != nil || !json.Valid(f.Data) {
			t.Fatalf("%s: text frame %q: %v", ser.Vsn(), f.Data, err)
		}
		out = append(out, m)
	}
	return out
}

// The reproduction: a client pushes a payload with invalid UTF-8
// into a room where another client listens. The sender gets an error
// reply on its topic with its ref; the listeners get nothing, and every
// text frame anyone got is valid UTF-8 and JSON.
func TestInvalidUTF8PayloadNotRelayed(t *testing.T) {
	e := newTestEnv(t, EndpointConfig{})
	for _, ser := range []Serializer{V1, V2} {
		t.Run(ser.Vsn(), func(t *testing.T) {
			topic := "room:" + ser.Vsn()
			listenerV1, connV1 := e.open(t, V1)
			listenerV2, connV2 := e.open(t, V2)
			listenerV1.handleFrame([]byte(`{"topic":"`+topic+`","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}`), false)
			listenerV2.handleFrame([]byte(`["1","1","`+topic+`","phx_join",{}]`), false)
			attacker, conn := e.open(t, ser)
			join := `["2","2","` + topic + `","phx_join",{}]`
			push := "[\"2\",\"3\",\"" + topic + "\",\"new_msg\",{\"body\":\"\xff\xfe\"}]"
			if ser == V1 {
				join = `{"topic":"` + topic + `","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}`
				push = "{\"topic\":\"" + topic + "\",\"event\":\"new_msg\",\"payload\":{\"body\":\"\xff\xfe\"},\"ref\":\"3\",\"join_ref\":\"2\"}"
			}
			attacker.handleFrame([]byte(join), false)
			checkTextFrames(t, V1, connV1.take())
			checkTextFrames(t, V2, connV2.take())
			checkTextFrames(t, ser, conn.take())

			attacker.handleFrame([]byte(push), false)
			if got := checkTextFrames(t, V1, connV1.take()); len(got) != 0 {
				t.Errorf("V1 listener got %+v", got)
			}
			if got := checkTextFrames(t, V2, connV2.take()); len(got) != 0 {
				t.Errorf("V2 listener got %+v", got)
			}
			got := checkTextFrames(t, ser, conn.take())
			if len(got) != 1 || got[0].Event != EventReply || got[0].Ref != `"3"` || got[0].Topic != topic ||
				got[0].Status != "error" || string(got[0].Payload) != `{"reason":"payload is not valid UTF-8"}` {
				t.Fatalf("sender got %+v, want an error reply to ref 3", got)
			}
		})
	}
	// A heartbeat is answered whatever its payload.
	hb, hc := e.open(t, V2)
	hb.handleFrame([]byte("[null,\"7\",\"phoenix\",\"heartbeat\",{\"x\":\"\xff\"}]"), false)
	if got := checkTextFrames(t, V2, hc.take()); len(got) != 1 || got[0].Status != "ok" || got[0].Ref != `"7"` {
		t.Errorf("heartbeat with an invalid payload: %+v", got)
	}

	// A Go channel replying with a ref it made up, or tracking a key or
	// meta that is not UTF-8, gets an error.
	s, c := e.open(t, V2)
	s.handleFrame([]byte(`["1","1","room:x","phx_join",{}]`), false)
	s.handleFrame([]byte(`["1","2","room:x","reply_bad_ref",{}]`), false)
	if got := checkTextFrames(t, V2, c.take()); len(got) != 2 || got[1].Status != "ok" {
		t.Errorf("reply_bad_ref: %+v", got)
	}
	if n := e.ep.Stats().InvalidPayloads.Load(); n != 3 {
		t.Errorf("InvalidPayloads = %d, want 3", n)
	}
}

// What Go code hands to Endpoint.Broadcast is checked too: the caller gets
// the error, and a Message published to the PubSub directly (an envelope
// from another node) reaches nobody rather than reaching them broken.
func TestBroadcastInvalidPayloadRefused(t *testing.T) {
	e := newTestEnv(t, EndpointConfig{})
	s1, c1 := e.open(t, V1)
	s2, c2 := e.open(t, V2)
	s1.handleFrame([]byte(`{"topic":"room:b","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}`), false)
	s2.handleFrame([]byte(`["1","1","room:b","phx_join",{}]`), false)
	c1.take()
	c2.take()
	err := e.ep.Broadcast(context.Background(), "room:b", "x", json.RawMessage("{\"a\":\"\xff\"}"))
	if !errors.Is(err, ErrInvalidPayload) {
		t.Errorf("Broadcast = %v, want ErrInvalidPayload", err)
	}
	for _, p := range []string{"{\"a\":\"\xff\"}", `{"a":`, `[]]`} {
		if err := e.ps.Publish(context.Background(), &pubsub.Message{Topic: "room:b", Event: "x", Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	if f := c1.take(); len(f) != 0 {
		t.Errorf("V1 socket got %+v", f)
	}
	if f := c2.take(); len(f) != 0 {
		t.Errorf("V2 socket got %+v", f)
	}
	if err := e.ep.Broadcast(context.Background(), "room:b", "x", json.RawMessage(`{"a":"é"}`)); err != nil {
		t.Fatal(err)
	}
	if len(checkTextFrames(t, V1, c1.take())) != 1 || len(checkTextFrames(t, V2, c2.take())) != 1 {
		t.Error("a valid broadcast was not delivered")
	}
}

func TestRefLengthLimit(t *testing.T) {
	e := newTestEnv(t, EndpointConfig{})
	s, c := e.open(t, V2)
	ok := strings.Repeat("7", DefaultMaxRefLength-2) // quotes included
	long := ok + "7"
	s.handleFrame([]byte(`["`+ok+`","`+ok+`","room:r","phx_join",{}]`), false)
	if got := checkTextFrames(t, V2, c.take()); len(got) != 1 || got[0].Status != "ok" {
		t.Fatalf("join with a %d-byte ref: %+v", DefaultMaxRefLength, got)
	}
	for _, frame := range []string{
		`["` + long + `","1","room:r2","phx_join",{}]`,
		`["1","` + long + `","room:r2","phx_join",{}]`,
		`["` + ok + `","` + long + `","room:r","new_msg",{}]`,
	} {
		s.handleFrame([]byte(frame), false)
		got := checkTextFrames(t, V2, c.take())
		if len(got) != 1 || got[0].Status != "error" || string(got[0].Payload) != `{"reason":"ref too long"}` {
			t.Errorf("%s: got %+v, want the error reply ref too long", frame, got)
		}
	}
	if n := e.ep.Stats().LimitRefLength.Load(); n != 3 {
		t.Errorf("LimitRefLength = %d, want 3", n)
	}
	if n := e.ep.Stats().Channels.Load(); n != 1 {
		t.Errorf("%d channels joined, want 1", n)
	}
	// Negative: no limit.
	e = newTestEnv(t, EndpointConfig{MaxRefLength: -1})
	s, c = e.open(t, V2)
	s.handleFrame([]byte(`["`+long+`","1","room:r","phx_join",{}]`), false)
	if got := checkTextFrames(t, V2, c.take()); len(got) != 1 || got[0].Status != "ok" {
		t.Fatalf("join with a long ref and no limit: %+v", got)
	}
}
