package conformance

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
)

// cat builds a binary frame from bytes (ints), strings and byte slices.
func cat(parts ...any) []byte {
	var out []byte
	for _, p := range parts {
		switch p := p.(type) {
		case int:
			out = append(out, byte(p))
		case string:
			out = append(out, p...)
		case []byte:
			out = append(out, p...)
		default:
			panic("cat: unsupported part")
		}
	}
	return out
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// expectBinary asserts that the next frame is the binary frame want.
func (c *conn) expectBinary(want []byte) {
	c.t.Helper()
	m := c.next()
	if !m.Binary || !bytes.Equal(m.Raw, want) {
		c.t.Fatalf("%s: unexpected frame\n got: %s\nwant: binary %x", c.v.name, m, want)
	}
}

// Item 24: a binary client push reaches the channel with its event and
// the raw bytes as payload.
func TestItem24_BinaryPushIn(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	c := tn.dial(t, v2)

	// The checklist's own frame, on a room: the room does not know the
	// event "upload", and says so in a reply that echoes the refs.
	c.send("3", "3", "room:1", "phx_join", `{"user":"ann"}`)
	c.expectFrame("3", "3", "room:1", "phx_reply", reply("ok", `{}`))
	c.settle() // presence_state and presence_diff
	c.sendRaw(mustHex("00 01 01 06 06 33 37 72 6f 6f 6d 3a 31 75 70 6c 6f 61 64 de ad be ef"), true)
	c.expectFrame("3", "7", "room:1", "phx_reply", reply("error", `{"reason":"unknown event"}`))

	// The bytes reach the channel untouched: binary_echo sends them back.
	topic := "conformance:1"
	c.joinRaw("3", topic, `{}`)
	payload := []byte{0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, '[', '"'}
	c.sendRaw(cat(0, 1, 1, len(topic), len("binary_echo"), "3", "7", topic, "binary_echo", payload), true)
	c.expectBinary(cat(1, 1, 1, len(topic), 2, "3", "7", topic, "ok", payload))

	// The same through wsclient's encoder, on a topic it joined.
	topic2 := "conformance:2"
	jr := c.join(topic2, `{}`)
	ref, err := c.Push(topic2, "binary_echo", channels.Binary(payload))
	if err != nil {
		t.Fatal(err)
	}
	c.expectBinary(cat(1, len(jr), len(ref), len(topic2), 2, jr, ref, topic2, "ok", payload))

	// §2.4: an empty ref is answered with an empty ref; an empty join_ref
	// is a stale one, dropped.
	c.sendRaw(cat(0, 1, 0, len(topic), len("binary_echo"), "3", topic, "binary_echo", 0x01), true)
	c.expectBinary(cat(1, 1, 0, len(topic), 2, "3", topic, "ok", 0x01))
	c.sendRaw(cat(0, 0, 1, len(topic), len("binary_echo"), "9", topic, "binary_echo", 0x01), true)
	c.quiet()
}

// Item 25: binary replies, pushes and broadcasts have the layouts of §2.4,
// byte for byte; V1 sockets get no binary frames.
func TestItem25_BinaryFramesOut(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	c := tn.dial(t, v2)

	t.Run("reply", func(t *testing.T) {
		c.t = t
		c.send("3", "3", "room:1", "phx_join", `{"user":"ann"}`)
		c.expectFrame("3", "3", "room:1", "phx_reply", reply("ok", `{}`))
		c.settle()
		c.sendRaw(cat(0, 1, 1, 6, 4, "3", "7", "room:1", "ping", 0x01, 0x02), true)
		// The checklist's bytes.
		c.expectBinary(mustHex("01 01 01 06 02 33 37 72 6f 6f 6d 3a 31 6f 6b 01 02"))
	})

	topic := "conformance:1"
	other := tn.dial(t, v2)
	old := tn.dial(t, v1)
	t.Run("push", func(t *testing.T) {
		c.t = t
		c.joinRaw("3", topic, `{}`)
		c.sendRaw(cat(0, 1, 1, len(topic), len("binary_push"), "3", "8", topic, "binary_push", 0x89, 0x50), true)
		c.expectBinary(cat(0, 1, len(topic), len("binary_push"), "3", topic, "binary_push", 0x89, 0x50))
		c.expectFrame("3", "8", topic, "phx_reply", reply("ok", `{}`))
	})
	t.Run("broadcast", func(t *testing.T) {
		c.t, other.t, old.t = t, t, t
		other.join(topic, `{}`)
		old.join(topic, `{}`)
		c.sendRaw(cat(0, 1, 1, len(topic), len("binary_broadcast"), "3", "9", topic, "binary_broadcast", 0xff), true)
		want := cat(2, len(topic), len("binary_broadcast"), topic, "binary_broadcast", 0xff)
		c.expectBinary(want)
		c.expectFrame("3", "9", topic, "phx_reply", reply("ok", `{}`))
		other.expectBinary(want)
		old.quiet() // a V1 socket cannot receive it
		// Text broadcasts still reach everyone.
		c.call(topic, "broadcast", `{"after":1}`, "ok", `{}`)
		other.expectFrame(nil, nil, topic, "broadcast", `{"after":1}`)
		old.expectFrame(nil, nil, topic, "broadcast", `{"after":1}`)
	})
}

// binaryLimitsChannel sends binary payloads from a test route, to check
// the 255-byte limits of binary headers (item 26).
type binaryLimitsChannel struct{}

func (binaryLimitsChannel) Join(*channels.ChannelSocket, channels.Payload) (any, error) {
	return nil, nil
}

func (binaryLimitsChannel) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	switch in.Event {
	case "push":
		return resultOf(s.Push("bin", channels.Binary{1, 2, 3}))
	case "push_long_event":
		return resultOf(s.Push(strings.Repeat("e", 256), channels.Binary{1}))
	case "reply":
		return channels.Ok(channels.Binary{1, 2, 3})
	case "reply_later":
		return resultOf(s.Reply(in.Ref, "ok", channels.Binary{1, 2, 3}))
	case "broadcast":
		_ = s.Broadcast("bin", channels.Binary{1})
		return channels.Ok(nil)
	}
	return channels.ErrorReply(map[string]string{"reason": "unknown event"})
}

func (binaryLimitsChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

func resultOf(err error) channels.Result {
	if err != nil {
		reason := err.Error()
		if errors.Is(err, channels.ErrFieldTooLong) {
			reason = "field too long"
		}
		return channels.ErrorReply(map[string]string{"reason": reason})
	}
	return channels.Ok(nil)
}

// Item 26: a topic or event longer than 255 bytes never goes out in a
// binary frame; the channel's Push and Reply get an error instead.
func TestItem26_BinaryFieldLimits(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) {
		c.Router.Handle("test:*", func(string) channels.Channel { return binaryLimitsChannel{} })
	})
	c := tn.dial(t, v2)

	long := "test:" + strings.Repeat("x", 251)
	if len(long) != 256 {
		t.Fatalf("topic length %d", len(long))
	}
	c.join(long, `{}`)
	c.call(long, "push", `{}`, "error", `{"reason":"field too long"}`)
	c.call(long, "reply_later", `{}`, "error", `{"reason":"field too long"}`)
	c.push(long, "reply", `{}`) // the reply cannot be encoded: nothing is sent
	c.quiet()
	// A broadcast on the topic cannot be encoded for the socket either;
	// anything sent to the broadcaster would come before its reply.
	c.send(c.JoinRef(long), "b1", long, "broadcast", `{}`)
	c.expectFrame(c.JoinRef(long), "b1", long, "phx_reply", reply("ok", `{}`))
	c.quiet()

	short := "test:1"
	c.join(short, `{}`)
	c.call(short, "push_long_event", `{}`, "error", `{"reason":"field too long"}`)
	c.quiet()
	// Within the limits the same push goes out.
	ref := c.push(short, "push", `{}`)
	c.expectBinary(cat(0, len(c.JoinRef(short)), len(short), 3, c.JoinRef(short), short, "bin", 1, 2, 3))
	c.expectFrame(c.JoinRef(short), ref, short, "phx_reply", reply("ok", `{}`))
}
