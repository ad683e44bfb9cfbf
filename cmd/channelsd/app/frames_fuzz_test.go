package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
	"github.com/channelsd/channelsd/transport"
)

// The property that keeps browser subscribers connected: whatever enters
// the node, on any entry point, every text frame any socket is sent is
// valid UTF-8 (RFC 6455 §8.1: browsers close the connection on a text
// frame that is not) and valid JSON of its serializer's shape. The entry
// points, fed from the fuzzer's bytes: a client's connect parameter user
// (a presence key), join params, pushes in V1 text, V2 text and V2 binary
// frames (new_msg, typing, ping: relayed, echoed), a broadcast through the
// endpoint (the HTTP API's path) and a message handed to the PubSub as
// another node's envelope would be. Frames pass through the room
// channel, the in-memory PubSub and presence (presence_state and
// presence_diff). The long-poll transport hands its lines to the same
// HandleFrame.

var propLogger = slog.New(slog.DiscardHandler)

// propConn records every frame a socket is sent.
type propConn struct {
	mu     sync.Mutex
	frames []channels.Frame
}

func (c *propConn) Send(f channels.Frame) error {
	c.mu.Lock()
	c.frames = append(c.frames, f)
	c.mu.Unlock()
	return nil
}

func (c *propConn) Close(int, string) {}

func (c *propConn) take() []channels.Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.frames
	c.frames = nil
	return f
}

type propSocket struct {
	ser  channels.Serializer
	sock transport.Socket
	conn *propConn
}

// jsonQuoteRaw writes s between quotes, escaping only quotes, backslashes
// and controls, so that invalid UTF-8 reaches the decoder as it is.
func jsonQuoteRaw(s string) string {
	b := []byte{'"'}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, `\u00`...)
			b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return string(append(b, '"'))
}

// textFrame builds a client text frame of ser's shape with raw fields.
func textFrame(ser channels.Serializer, joinRef, ref, topic, event string, payload []byte) []byte {
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	if ser == channels.V1 {
		return []byte(`{"topic":` + jsonQuoteRaw(topic) + `,"event":` + jsonQuoteRaw(event) +
			`,"payload":` + string(payload) + `,"ref":` + jsonQuoteRaw(ref) + `,"join_ref":` + jsonQuoteRaw(joinRef) + `}`)
	}
	return []byte(`[` + jsonQuoteRaw(joinRef) + `,` + jsonQuoteRaw(ref) + `,` + jsonQuoteRaw(topic) + `,` +
		jsonQuoteRaw(event) + `,` + string(payload) + `]`)
}

func checkFrames(t *testing.T, who string, s *propSocket) []channels.Message {
	t.Helper()
	var out []channels.Message
	for _, f := range s.conn.take() {
		if f.Binary {
			if s.ser != channels.V2 {
				t.Fatalf("%s (%s) was sent a binary frame % x", who, s.ser.Vsn(), f.Data)
			}
			m, err := channels.DecodeServerBinary(f.Data)
			if err != nil {
				t.Fatalf("%s was sent a bad binary frame % x: %v", who, f.Data, err)
			}
			out = append(out, m)
			continue
		}
		if !utf8.Valid(f.Data) {
			t.Fatalf("%s (%s) was sent a text frame that is not UTF-8: %q", who, s.ser.Vsn(), f.Data)
		}
		if !json.Valid(f.Data) {
			t.Fatalf("%s (%s) was sent a text frame that is not JSON: %q", who, s.ser.Vsn(), f.Data)
		}
		// The server's frames have the shape of the client's.
		m, err := s.ser.Decode(f.Data, false)
		if err != nil {
			t.Fatalf("%s (%s) was sent %q: %v", who, s.ser.Vsn(), f.Data, err)
		}
		out = append(out, m)
	}
	return out
}

// Entry points the fuzzer picks from.
const (
	entryPush = iota // a text frame, V1 or V2 as the socket speaks
	entryPushBinary
	entryJoinParams
	entryEndpointBroadcast
	entryRemote
	entryRemoteBinary
	entryCount
)

func FuzzRoomFrames(f *testing.F) {
	for entry := range entryCount {
		for _, s := range []struct {
			user, event string
			payload     []byte
		}{
			{"ann", "new_msg", []byte(`{"body":"hi"}`)},
			{"\xff\xfe", "new_msg", []byte("{\"body\":\"\xff\xfe\"}")},
			{"bob", "typing", []byte("{\"x\":\"\xc3\"}")},
			{"é", "ping", []byte("\"\xed\xa0\x80\"")},
			{"x", "new_msg\xff", []byte(`{"body":"\ud800"}`)},
			{"x", "new_msg", []byte(`{"body":`)},
			{"x", "presence_diff", []byte("{\"joins\":{\"\xff\":{\"metas\":[]}},\"leaves\":{}}")},
		} {
			f.Add(uint8(entry), s.user, s.event, s.payload)
			f.Add(uint8(entry)|0x80, s.user, s.event, s.payload) // a V1 sender
		}
	}
	f.Fuzz(func(t *testing.T, entry uint8, user, event string, payload []byte) {
		ps := local.New()
		tracker := presence.NewLocal(ps)
		defer func() {
			_ = tracker.Close()
			_ = ps.Close()
		}()
		ep, err := channels.NewEndpoint(channels.EndpointConfig{
			Router: Router(Options{}), Handler: SocketHandler(Options{}),
			PubSub: ps, Presence: tracker, Logger: propLogger,
			// As in newEnv: the application is under test.
			MaxPayloadSize: -1, MaxTopicLength: -1, MaxEventLength: -1, MaxMessagesPerSecond: -1,
		})
		if err != nil {
			t.Fatal(err)
		}
		tryOpen := func(ser channels.Serializer, user string) (*propSocket, error) {
			id, err := ep.Runtime().Connect(context.Background(), &channels.ConnectInfo{Params: map[string]string{"user": user}, Transport: "websocket"})
			if err != nil {
				return nil, err
			}
			conn := &propConn{}
			return &propSocket{ser: ser, sock: transport.FromEndpoint(ep).Open(conn, ser, id), conn: conn}, nil
		}
		open := func(ser channels.Serializer, user string) *propSocket {
			p, err := tryOpen(ser, user)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			return p
		}
		const topic = "room:lobby"
		sub1, sub2 := open(channels.V1, "ann"), open(channels.V2, "bob")
		defer sub1.sock.HandleClose()
		defer sub2.sock.HandleClose()
		sub1.sock.HandleFrame(textFrame(channels.V1, "1", "1", topic, "phx_join", nil), false)
		sub2.sock.HandleFrame(textFrame(channels.V2, "1", "1", topic, "phx_join", nil), false)

		ser := channels.V2 // the sender's serializer
		if entry&0x80 != 0 {
			ser = channels.V1
		}
		attacker, err := tryOpen(ser, user)
		if err != nil {
			// A user name the room cannot take (not UTF-8, too long) is
			// refused at connect: nothing of it reaches anyone.
			checkFrames(t, "subscriber 1", sub1)
			checkFrames(t, "subscriber 2", sub2)
			return
		}
		defer attacker.sock.HandleClose()
		all := func() {
			checkFrames(t, "subscriber 1", sub1)
			checkFrames(t, "subscriber 2", sub2)
			checkFrames(t, "sender", attacker)
		}
		joinPayload := []byte(`{}`)
		if entry&0x7f%entryCount == entryJoinParams {
			joinPayload = append(append([]byte(`{"user":`), jsonQuoteRaw(string(payload))...), '}')
		}
		attacker.sock.HandleFrame(textFrame(ser, "2", "2", topic, "phx_join", joinPayload), false)
		all()

		switch entry & 0x7f % entryCount {
		case entryPush:
			attacker.sock.HandleFrame(textFrame(ser, "2", "3", topic, event, payload), false)
		case entryPushBinary:
			f, err := channels.EncodeClientBinary(nil, &channels.Message{
				JoinRef: channels.StringRef("2"), Ref: channels.StringRef("3"), Topic: topic, Event: event, Payload: payload,
			})
			if err == nil {
				attacker.sock.HandleFrame(f.Data, true)
			}
		case entryJoinParams:
			// Rejoin: leave, then join again with the same params.
			attacker.sock.HandleFrame(textFrame(ser, "2", "4", topic, "phx_leave", nil), false)
			attacker.sock.HandleFrame(textFrame(ser, "5", "5", topic, "phx_join", joinPayload), false)
		case entryEndpointBroadcast:
			_ = ep.Broadcast(context.Background(), topic, event, json.RawMessage(payload))
		case entryRemote, entryRemoteBinary:
			_ = ps.Publish(context.Background(), &pubsub.Message{Topic: topic, Event: event, Payload: payload, Binary: entry&0x7f%entryCount == entryRemoteBinary})
		}
		all()
		attacker.sock.HandleClose() // presence_diff with the leave
		all()

		// And the room still works for everyone else.
		sub2.sock.HandleFrame(textFrame(channels.V2, "1", "9", topic, "new_msg", []byte(`{"body":"still here"}`)), false)
		for i, s := range []*propSocket{sub1, sub2} {
			got := false
			for _, m := range checkFrames(t, "subscriber "+strconv.Itoa(i+1), s) {
				got = got || (m.Event == "new_msg" && string(m.Payload) == `{"body":"still here","user":"bob"}`)
			}
			if !got {
				t.Fatalf("subscriber %d did not get the next message", i+1)
			}
		}
	})
}
