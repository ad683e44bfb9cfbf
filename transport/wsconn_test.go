package transport

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

func echoHarness(t *testing.T, m readMode, cfg WebSocketConfig) (*harness, *client, *fakeSocket) {
	t.Helper()
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, m, cfg, ep)
	c := hs.dial(t, "vsn=2.0.0", ws.Dialer{})
	return hs, c, <-ep.opened
}

func expectMessage(t *testing.T, s *fakeSocket, data []byte, binary bool) {
	t.Helper()
	f := s.nextFrame(t)
	if !bytes.Equal(f.data, data) || f.binary != binary {
		t.Fatalf(
			"HandleFrame got %d bytes binary=%v (%.40q), want %d bytes binary=%v (%.40q)",
			len(f.data), f.binary, f.data, len(data), binary, data,
		)
	}
}

func TestTextAndBinaryMessages(t *testing.T) { inReadModes(t, testTextAndBinaryMessages) }

func testTextAndBinaryMessages(t *testing.T, m readMode) {
	_, c, s := echoHarness(t, m, WebSocketConfig{})

	c.send("hello")
	expectMessage(t, s, []byte("hello"), false)
	c.expectFrame(ws.OpText, "hello")

	c.writeFrame(ws.OpBinary, true, true, []byte{0, 1, 2, 0xff})
	expectMessage(t, s, []byte{0, 1, 2, 0xff}, true)
	c.expectFrame(ws.OpBinary, "\x00\x01\x02\xff")

	c.send("")
	expectMessage(t, s, []byte{}, false)
	c.expectFrame(ws.OpText, "")

	// Bigger than the read buffer: reassembled outside it.
	big := strings.Repeat("0123456789", 20_000)
	c.send(big)
	expectMessage(t, s, []byte(big), false)
	c.expectFrame(ws.OpText, big)

	// Several messages in one write arrive in order.
	var buf bytes.Buffer
	for i := range 50 {
		p := []byte(fmt.Sprint("m", i))
		h := ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(p)), Masked: true, Mask: ws.NewMask()}
		ws.Cipher(p, h.Mask, 0)
		_ = ws.WriteHeader(&buf, h)
		buf.Write(p)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		expectMessage(t, s, []byte(fmt.Sprint("m", i)), false)
		c.expectFrame(ws.OpText, fmt.Sprint("m", i))
	}
}

func TestFragmentedMessages(t *testing.T) { inReadModes(t, testFragmentedMessages) }

func testFragmentedMessages(t *testing.T, m readMode) {
	_, c, s := echoHarness(t, m, WebSocketConfig{})

	// RFC 6455 §5.4: fragments, with control frames in between.
	c.writeFrame(ws.OpText, false, true, []byte("hel"))
	c.writeFrame(ws.OpPing, true, true, []byte("p1"))
	c.writeFrame(ws.OpContinuation, false, true, nil)
	c.writeFrame(ws.OpPong, true, true, []byte("unsolicited"))
	c.writeFrame(ws.OpContinuation, true, true, []byte("lo"))
	c.expectFrame(ws.OpPong, "p1")
	expectMessage(t, s, []byte("hello"), false)
	c.expectFrame(ws.OpText, "hello")

	// A binary message in fragments bigger than the read buffer.
	var whole []byte
	for i := range 3 {
		part := bytes.Repeat([]byte{byte(i)}, 3000)
		whole = append(whole, part...)
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpBinary
		}
		c.writeFrame(op, i == 2, true, part)
	}
	expectMessage(t, s, whole, true)
	c.expectFrame(ws.OpBinary, string(whole))

	// UTF-8 is checked on the whole message: a character may straddle
	// fragments.
	c.writeFrame(ws.OpText, false, true, []byte("caf\xc3"))
	c.writeFrame(ws.OpContinuation, true, true, []byte("\xa9"))
	expectMessage(t, s, []byte("café"), false)
	c.expectFrame(ws.OpText, "café")
}

func TestPingPong(t *testing.T) { inReadModes(t, testPingPong) }

func testPingPong(t *testing.T, m readMode) {
	_, c, s := echoHarness(t, m, WebSocketConfig{})
	for _, p := range []string{"", "x", strings.Repeat("p", 125)} {
		c.writeFrame(ws.OpPing, true, true, []byte(p))
		c.expectFrame(ws.OpPong, p)
	}
	// A pong needs no answer (RFC 6455 §5.5.3) and reaches no socket.
	c.writeFrame(ws.OpPong, true, true, []byte("hb"))
	c.send("after")
	expectMessage(t, s, []byte("after"), false)
	c.expectFrame(ws.OpText, "after")
}

func TestCloseFromClient(t *testing.T) { inReadModes(t, testCloseFromClient) }

func testCloseFromClient(t *testing.T, m readMode) {
	for _, tc := range []struct {
		name  string
		body  []byte
		code  int // echoed or error code; 0: no body
		count func(*Stats) uint64
	}{
		{
			name: "normal",
			body: closeBodyOf(1000, "bye"),
			code: 1000,
		},
		{
			name: "going away",
			body: closeBodyOf(1001, ""),
			code: 1001,
		},
		{
			name: "application code",
			body: closeBodyOf(4001, "app"),
			code: 4001,
		},
		{
			name: "no status code",
			body: nil,
			code: 0,
		},
		{
			name:  "one-byte body",
			body:  []byte{3},
			code:  1002,
			count: func(s *Stats) uint64 { return s.ProtocolError.Load() },
		},
		{
			name:  "code that must not be sent",
			body:  closeBodyOf(1005, ""),
			code:  1002,
			count: func(s *Stats) uint64 { return s.ProtocolError.Load() },
		},
		{
			name:  "code out of range",
			body:  closeBodyOf(999, ""),
			code:  1002,
			count: func(s *Stats) uint64 { return s.ProtocolError.Load() },
		},
		{
			name:  "reason not UTF-8",
			body:  closeBodyOf(1000, "\xff"),
			code:  1007,
			count: func(s *Stats) uint64 { return s.InvalidUTF8.Load() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs, c, s := echoHarness(t, m, WebSocketConfig{})
			c.writeFrame(ws.OpClose, true, true, tc.body)
			c.expectClose(tc.code)
			// RFC 6455 §7.1.1: the server closes the TCP connection after the
			// close handshake.
			c.expectEOF()
			c.conn.Close()
			s.awaitClose(t)
			if tc.count != nil && tc.count(hs.h.Stats()) != 1 {
				t.Errorf(
					"counter not incremented",
				)
			}
		})
	}
}

func TestMessageTooBig(t *testing.T) { inReadModes(t, testMessageTooBig) }

func testMessageTooBig(t *testing.T, m readMode) {
	for _, tc := range []struct {
		name  string
		write func(c *client)
	}{
		{
			name:  "one frame",
			write: func(c *client) { c.writeFrame(ws.OpText, true, true, bytes.Repeat([]byte("a"), 1025)) },
		},
		{
			name: "fragments",
			write: func(c *client) {
				c.writeFrame(ws.OpBinary, false, true, bytes.Repeat([]byte("a"), 600))
				c.writeFrame(ws.OpContinuation, true, true, bytes.Repeat([]byte("a"), 600))
			},
		},
		{
			// The server stops reading after the header; it must still
			// deliver its close frame rather than reset the connection
			// on the unread megabytes.
			name:  "megabytes",
			write: func(c *client) { c.writeFrame(ws.OpBinary, true, true, make([]byte, 4<<20)) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs, c, s := echoHarness(t, m, WebSocketConfig{MaxFrameSize: 1024})
			c.writeFrame(ws.OpText, true, true, bytes.Repeat([]byte("b"), 1024))
			c.expectFrame(ws.OpText, strings.Repeat("b", 1024))
			expectMessage(t, s, bytes.Repeat([]byte("b"), 1024), false)

			tc.write(c)
			if reason := c.expectClose(1009); reason != "message too big" {
				t.Errorf(
					"reason %q",
					reason,
				)
			}
			c.conn.Close()
			s.awaitClose(t)
			if n := hs.h.Stats().TooBig.Load(); n != 1 {
				t.Errorf(
					"TooBig = %d, want 1",
					n,
				)
			}
			if len(s.frames) != 0 {
				t.Errorf(
					"the oversized message reached HandleFrame",
				)
			}
		})
	}
}

func TestInvalidUTF8(t *testing.T) { inReadModes(t, testInvalidUTF8) }

func testInvalidUTF8(t *testing.T, m readMode) {
	hs, c, s := echoHarness(t, m, WebSocketConfig{})
	// The same bytes are fine in a binary message.
	c.writeFrame(ws.OpBinary, true, true, []byte("\xff\xfe"))
	expectMessage(t, s, []byte("\xff\xfe"), true)
	c.expectFrame(ws.OpBinary, "\xff\xfe")

	c.writeFrame(ws.OpText, true, true, []byte("ok\xff\xfe"))
	c.expectClose(1007)
	c.conn.Close()
	s.awaitClose(t)
	if n := hs.h.Stats().InvalidUTF8.Load(); n != 1 {
		t.Errorf(
			"InvalidUTF8 = %d, want 1",
			n,
		)
	}
	if len(s.frames) != 0 {
		t.Errorf(
			"the invalid message reached HandleFrame",
		)
	}
}

func TestProtocolErrors(t *testing.T) { inReadModes(t, testProtocolErrors) }

func testProtocolErrors(t *testing.T, m readMode) {
	for _, tc := range []struct {
		name  string
		write func(c *client) error
	}{
		{
			name: "unmasked frame",
			write: func(c *client) error {
				return c.tryWriteFrame(ws.OpText, true, false, 0, []byte("hi"))
			},
		},
		{
			name: "reserved bit",
			write: func(c *client) error {
				return c.tryWriteFrame(ws.OpText, true, true, ws.Rsv(true, false, false), []byte("hi"))
			},
		},
		{
			name: "reserved data opcode",
			write: func(c *client) error {
				return c.tryWriteFrame(ws.OpCode(3), true, true, 0, []byte("hi"))
			},
		},
		{
			name: "reserved control opcode",
			write: func(c *client) error {
				return c.tryWriteFrame(ws.OpCode(0xb), true, true, 0, nil)
			},
		},
		{
			name: "continuation without a message",
			write: func(c *client) error {
				return c.tryWriteFrame(ws.OpContinuation, true, true, 0, []byte("hi"))
			},
		},
		{
			name: "new message inside a fragmented one",
			write: func(c *client) error {
				if err := c.tryWriteFrame(ws.OpText, false, true, 0, []byte("a")); err != nil {
					return err
				}
				return c.tryWriteFrame(ws.OpText, true, true, 0, []byte("b"))
			},
		},
		{
			name: "fragmented ping",
			write: func(c *client) error {
				return c.tryWriteFrame(ws.OpPing, false, true, 0, []byte("p"))
			},
		},
		{
			name: "control payload over 125 bytes",
			write: func(c *client) error {
				return c.tryWriteFrame(ws.OpPing, true, true, 0, make([]byte, 126))
			},
		},
		{
			name: "64-bit length with the top bit set",
			write: func(c *client) error {
				_, err := c.conn.Write([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4})
				return err
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs, c, s := echoHarness(t, m, WebSocketConfig{})
			if err := tc.write(c); err != nil {
				t.Fatal(err)
			}
			if reason := c.expectClose(1002); !strings.HasPrefix(reason, "protocol error") {
				t.Errorf(
					"reason %q",
					reason,
				)
			}
			c.conn.Close()
			s.awaitClose(t)
			if n := hs.h.Stats().ProtocolError.Load(); n != 1 {
				t.Errorf(
					"ProtocolError = %d, want 1",
					n,
				)
			}
			if len(s.frames) != 0 {
				t.Errorf(
					"a frame reached HandleFrame",
				)
			}
		})
	}
}

func TestIdleTimeout(t *testing.T) { inReadModes(t, testIdleTimeout) }

func testIdleTimeout(t *testing.T, m readMode) {
	// The client sends ten times per timeout, so that a loaded machine
	// stalling it for a while does not make the server right to close.
	const idle = time.Second
	hs, c, s := echoHarness(t, m, WebSocketConfig{IdleTimeout: idle})

	// Frames of any kind keep the connection open well past the timeout.
	// The ticker paces the client; it does not wait for the server.
	tick := time.NewTicker(idle / 10)
	defer tick.Stop()
	start := time.Now()
	for i := 0; time.Since(start) < 2*idle; i++ {
		<-tick.C
		if i%2 == 0 {
			c.writeFrame(ws.OpPing, true, true, []byte("hb"))
			c.expectFrame(ws.OpPong, "hb")
		} else {
			c.send("hb")
			c.expectFrame(ws.OpText, "hb")
		}
	}
	tick.Stop()

	// Silence: the server closes with 1001 (PROTOCOL.md §5.3).
	if reason := c.expectClose(1001); reason != "idle timeout" {
		t.Errorf(
			"reason %q",
			reason,
		)
	}
	c.conn.Close()
	s.awaitClose(t)
	if n := hs.h.Stats().IdleTimeouts.Load(); n != 1 {
		t.Errorf(
			"IdleTimeouts = %d, want 1",
			n,
		)
	}
}

func TestIdleTimeoutSilentClient(t *testing.T) { inReadModes(t, testIdleTimeoutSilentClient) }

func testIdleTimeoutSilentClient(t *testing.T, m readMode) {
	// A client that neither sends nor answers the close frame: the
	// server gives up after CloseTimeout.
	hs, c, s := echoHarness(t, m, WebSocketConfig{IdleTimeout: 100 * time.Millisecond, CloseTimeout: 100 * time.Millisecond})
	c.expectClose(1001)
	s.awaitClose(t)
	c.expectEOF()
	if n := hs.h.Stats().IdleTimeouts.Load(); n != 1 {
		t.Errorf(
			"IdleTimeouts = %d, want 1",
			n,
		)
	}
}

func TestServerClose(t *testing.T) { inReadModes(t, testServerClose) }

func testServerClose(t *testing.T, m readMode) {
	_, c, s := echoHarness(t, m, WebSocketConfig{})
	if err := s.conn.Send(channels.Frame{Data: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	if err := s.conn.Send(channels.Frame{Data: []byte("b"), Binary: true}); err != nil {
		t.Fatal(err)
	}
	s.conn.Close(channels.CloseGoingAway, "bye")
	s.conn.Close(channels.CloseInternalError, "again") // no effect
	if err := s.conn.Send(channels.Frame{Data: []byte("c")}); !errors.Is(err, channels.ErrConnClosed) {
		t.Errorf(
			"Send after Close: %v, want ErrConnClosed",
			err,
		)
	}
	// What was queued goes out first, then the close frame.
	c.expectFrame(ws.OpText, "a")
	c.expectFrame(ws.OpBinary, "b")
	if reason := c.expectClose(1001); reason != "bye" {
		t.Errorf(
			"reason %q",
			reason,
		)
	}
	c.expectEOF()
	// The client answers; the server is already half-closed.
	_ = c.tryWriteFrame(ws.OpClose, true, true, 0, closeBodyOf(1001, ""))
	c.conn.Close()
	s.awaitClose(t)
	if err := s.conn.Send(channels.Frame{Data: []byte("d")}); !errors.Is(err, channels.ErrConnClosed) {
		t.Errorf(
			"Send after HandleClose: %v, want ErrConnClosed",
			err,
		)
	}
	s.conn.Close(channels.CloseGoingAway, "late") // no effect, no panic
}

func TestServerCloseBody(t *testing.T) { inReadModes(t, testServerCloseBody) }

func testServerCloseBody(t *testing.T, m readMode) {
	long := strings.Repeat("é", 100) // 200 bytes
	for _, tc := range []struct {
		code, want int
		reason     string
	}{
		{
			code: 1012,
			want: 1012,
		},
		{
			code: channels.ClosePolicy,
			want: channels.ClosePolicy,
		},
		{
			code: 1005,
			want: channels.CloseInternalError,
		},
		{
			code: 1006,
			want: channels.CloseInternalError,
		},
		{
			code: 70000,
			want: channels.CloseInternalError,
		},
		{
			code:   4000,
			want:   4000,
			reason: long,
		},
	} {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			_, c, s := echoHarness(t, m, WebSocketConfig{})
			s.conn.Close(tc.code, tc.reason)
			reason := c.expectClose(tc.want)
			if len(reason) > 123 || !utf8.ValidString(reason) || !strings.HasPrefix(tc.reason, reason) || (tc.reason != "" && len(reason) < 122) {
				t.Errorf(
					"reason %q (%d bytes) for %d-byte %q",
					reason, len(reason), len(tc.reason), tc.reason,
				)
			}
			c.conn.Close()
			s.awaitClose(t)
		})
	}
}

func TestCloseOnOpen(t *testing.T) { inReadModes(t, testCloseOnOpen) }

func testCloseOnOpen(t *testing.T, m readMode) {
	// channels.Runtime.Open closes a connection at once when the node is
	// shutting down, before the transport has started reading.
	ep := newFakeEndpoint()
	ep.onOpen = func(s *fakeSocket) { s.conn.Close(channels.CloseGoingAway, "server shutting down") }
	hs := newHarness(t, m, WebSocketConfig{}, ep)
	c := hs.dial(t, "", ws.Dialer{})
	s := <-ep.opened
	c.expectClose(1001)
	c.expectEOF()
	c.conn.Close()
	s.awaitClose(t)
}

func TestCloseFromHandleFrame(t *testing.T) { inReadModes(t, testCloseFromHandleFrame) }

func testCloseFromHandleFrame(t *testing.T, m readMode) {
	ep := newFakeEndpoint()
	ep.onFrame = func(s *fakeSocket, data []byte, _ bool) {
		switch string(data) {
		case "close":
			_ = s.conn.Send(channels.Frame{Data: []byte("last")})
			s.conn.Close(channels.ClosePolicy, "go away")
		case "panic":
			panic("boom")
		}
	}
	hs := newHarness(t, m, WebSocketConfig{}, ep)

	c := hs.dial(t, "", ws.Dialer{})
	s := <-ep.opened
	c.send("close")
	c.send("ignored") // after the close: never reaches the socket
	c.expectFrame(ws.OpText, "last")
	c.expectClose(channels.ClosePolicy)
	c.conn.Close()
	s.awaitClose(t)
	if f := s.nextFrame(t); string(f.data) != "close" {
		t.Fatalf(
			"first frame %q",
			f.data,
		)
	}
	if len(s.frames) != 0 {
		t.Errorf(
			"a frame after the close reached HandleFrame",
		)
	}

	// A panicking socket closes its connection with 1011, not the server.
	c = hs.dial(t, "", ws.Dialer{})
	s = <-ep.opened
	c.send("panic")
	c.expectClose(channels.CloseInternalError)
	c.conn.Close()
	s.awaitClose(t)
}

func TestClientVanishes(t *testing.T) { inReadModes(t, testClientVanishes) }

func testClientVanishes(t *testing.T, m readMode) {
	hs, c, s := echoHarness(t, m, WebSocketConfig{})
	c.send("x")
	c.expectFrame(ws.OpText, "x")
	c.conn.Close()
	s.awaitClose(t)
	if err := s.conn.Send(channels.Frame{Data: []byte("y")}); !errors.Is(err, channels.ErrConnClosed) {
		t.Errorf(
			"Send after the client left: %v, want ErrConnClosed",
			err,
		)
	}
	// A vanished client mid-message too.
	c = hs.dial(t, "", ws.Dialer{})
	s = <-hs.ep.opened
	c.writeFrame(ws.OpText, false, true, []byte("half"))
	c.conn.Close()
	s.awaitClose(t)
}

func TestSlowConsumer(t *testing.T) { inWriteModes(t, testSlowConsumer) }

func testSlowConsumer(t *testing.T, m readMode) {
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, m, WebSocketConfig{
		MaxQueue:      64,
		MaxQueueBytes: 8 << 20,
		WriteTimeout:  time.Minute, // the queue bound, not the timeout, must catch it
		CloseTimeout:  200 * time.Millisecond,
	}, ep)
	fast := hs.dial(t, "", ws.Dialer{})
	fsock := <-ep.opened
	slow := hs.dial(t, "", ws.Dialer{})
	ssock := <-ep.opened

	// The fast client reads everything and reports each frame.
	got := make(chan struct{}, 1<<16)
	readerDone := make(chan error, 1)
	go func() {
		for {
			if _, _, err := fast.tryReadFrame(); err != nil {
				readerDone <- err
				return
			}
			got <- struct{}{}
		}
	}()

	// Both sockets get the same frames at the pace of the fast client
	// (at most 16 frames ahead of it). The slow client never reads: its
	// kernel buffers fill, then its queue, then Send refuses.
	const window = 16
	frame := channels.Frame{Data: bytes.Repeat([]byte("x"), 64<<10), Binary: true}
	var err error
	sent := 0
	for ; sent < 100_000; sent++ {
		if err := fsock.conn.Send(frame); err != nil {
			t.Fatalf(
				"the reading client's Send failed after %d frames: %v",
				sent, err,
			)
		}
		if err = ssock.conn.Send(frame); err != nil {
			break
		}
		if sent >= window {
			select {
			case <-got:
			case err := <-readerDone:
				t.Fatalf(
					"fast client: %v",
					err,
				)
			}
		}
	}
	if !errors.Is(err, channels.ErrSlowConsumer) {
		t.Fatalf(
			"after %d frames Send returned %v, want ErrSlowConsumer",
			sent, err,
		)
	}
	if sent <= 64 {
		t.Errorf(
			"slow consumer after %d frames: the queue (64) should come on top of the kernel's buffers",
			sent,
		)
	}
	t.Logf("slow consumer detected after %d frames of 64 KiB", sent)
	if err := ssock.conn.Send(frame); !errors.Is(err, channels.ErrConnClosed) {
		t.Errorf(
			"Send after the slow-consumer close: %v, want ErrConnClosed",
			err,
		)
	}
	// The close frame cannot get through a full pipe: the connection is
	// dropped after CloseTimeout.
	ssock.awaitClose(t)
	if n := hs.h.Stats().SlowConsumers.Load(); n != 1 {
		t.Errorf(
			"SlowConsumers = %d, want 1",
			n,
		)
	}

	// The other socket is unaffected.
	if err := fsock.conn.Send(channels.Frame{Data: []byte("still here")}); err != nil {
		t.Fatal(err)
	}
	fast.conn.Close()
	<-readerDone
	fsock.awaitClose(t)
	slow.conn.Close()
}

func TestSendBurstKeepsOrder(t *testing.T) { inWriteModes(t, testSendBurstKeepsOrder) }

func testSendBurstKeepsOrder(t *testing.T, m readMode) {
	const n = 3000
	_, c, s := echoHarness(t, m, WebSocketConfig{MaxQueue: n, MaxQueueBytes: 64 << 20})
	done := make(chan error, 1)
	go func() {
		for i := range n {
			data := []byte(fmt.Sprint(i))
			if i%100 == 0 {
				data = bytes.Repeat(data, 5000) // some frames bigger than the write buffer
			}
			if err := s.conn.Send(channels.Frame{Data: data}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		want := fmt.Sprint(i)
		if i%100 == 0 {
			want = strings.Repeat(want, 5000)
		}
		c.expectFrame(ws.OpText, want)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFramesSentWithTheHandshake(t *testing.T) { inReadModes(t, testFramesSentWithTheHandshake) }

func testFramesSentWithTheHandshake(t *testing.T, m readMode) {
	// A client may send its first frames right behind the upgrade request;
	// net/http has them in its buffer when we hijack.
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, m, WebSocketConfig{}, ep)
	conn, err := net.Dial("tcp", hs.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var req bytes.Buffer
	req.WriteString("GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n")
	for k, vs := range upgradeHeader() {
		req.WriteString(k + ": " + vs[0] + "\r\n")
	}
	req.WriteString("\r\n")
	for _, m := range []string{"one", "two"} {
		p := []byte(m)
		h := ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(p)), Masked: true, Mask: ws.NewMask()}
		ws.Cipher(p, h.Mask, 0)
		_ = ws.WriteHeader(&req, h)
		req.Write(p)
	}
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(waitLimit))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf(
			"handshake: %v %v",
			resp, err,
		)
	}
	s := <-ep.opened
	expectMessage(t, s, []byte("one"), false)
	expectMessage(t, s, []byte("two"), false)
	c := &client{t: t, conn: conn, r: br}
	c.expectFrame(ws.OpText, "one")
	c.expectFrame(ws.OpText, "two")
	conn.Close()
	s.awaitClose(t)
}

func TestReadPayloadGrowsWithData(t *testing.T) {
	// A peer that declares a big frame and sends little gets a buffer
	// sized by what it sent, not by what it declared.
	b, err := readPayload(strings.NewReader("short"), nil, 1<<20, nil)
	if !errors.Is(err, io.ErrUnexpectedEOF) || string(b) != "short" || cap(b) > msgBufferSize {
		t.Fatalf(
			"readPayload: %q cap %d err %v",
			b, cap(b), err,
		)
	}
	data := strings.Repeat("z", 100_000)
	b, err = readPayload(strings.NewReader(data), make([]byte, 0, 16), int64(len(data)), nil)
	if err != nil || string(b) != data {
		t.Fatalf(
			"readPayload: %d bytes, err %v",
			len(b), err,
		)
	}
}

func TestStalledClientsDoNotHoldBackOthers(t *testing.T) {
	inWriteModes(t, testStalledClientsDoNotHoldBackOthers)
}

func testStalledClientsDoNotHoldBackOthers(t *testing.T, m readMode) {
	// More clients that never read than there are writers: if a writer
	// waited for a full socket, every writer would be stuck on one of
	// them until WriteTimeout, and the reading client would starve.
	ep := newFakeEndpoint()
	hs := newHarness(t, m, WebSocketConfig{
		MaxQueue:      1 << 16,
		MaxQueueBytes: 1 << 30,
		WriteTimeout:  time.Hour, // only a writer that does not wait lets the test pass
	}, ep)
	stalled := 2*runtime.GOMAXPROCS(0) + 1
	var clients []*client
	var socks []*fakeSocket
	for range stalled {
		clients = append(clients, hs.dial(t, "", ws.Dialer{}))
		socks = append(socks, <-ep.opened)
	}
	reader := hs.dial(t, "", ws.Dialer{})
	rsock := <-ep.opened

	// 32 MiB each: more than the kernel buffers of a loopback connection
	// hold, so every stalled connection ends with a write the kernel does
	// not take. The frames share one array.
	frame := channels.Frame{Data: bytes.Repeat([]byte("x"), 64<<10), Binary: true}
	for _, s := range socks {
		for range 512 {
			if err := s.conn.Send(frame); err != nil {
				t.Fatalf("Send to a stalled client: %v", err)
			}
		}
	}
	for i := range 100 {
		msg := fmt.Sprint("to the reader ", i)
		if err := rsock.conn.Send(channels.Frame{Data: []byte(msg)}); err != nil {
			t.Fatal(err)
		}
		reader.expectFrame(ws.OpText, msg)
	}
	for _, c := range clients {
		c.conn.Close()
	}
}
