package transport

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Hostile clients the review found held (issue 16): ping floods and
// fuzzed frames. These tests keep it so.

// TestPingFlood: a client that floods pings and reads none of the pongs
// fills its outbound queue, which is bounded, and is closed as a slow
// consumer (1008); the pongs do not pile up in memory.
func TestPingFlood(t *testing.T) { inReadModes(t, testPingFlood) }

func testPingFlood(t *testing.T, m readMode) {
	const maxQueue = 64
	hs, c, s := echoHarness(t, m, WebSocketConfig{MaxQueue: maxQueue, CloseTimeout: 500 * time.Millisecond})
	payload := bytes.Repeat([]byte("p"), ws.MaxControlFramePayloadSize)
	frame := ws.MustCompileFrame(ws.MaskFrameInPlace(ws.NewPingFrame(payload)))
	// 100,000 pings: 12 MiB of pongs, more than the kernel's socket
	// buffers on both ends hold.
	flood := bytes.Repeat(frame, 1000)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	done := make(chan int)
	go func() {
		sent := 0
		deadline := time.Now().Add(waitLimit)
		_ = c.conn.SetWriteDeadline(deadline)
		for range 100 {
			if _, err := c.conn.Write(flood); err != nil {
				break
			}
			sent += 1000
		}
		done <- sent
	}()
	s.awaitClose(t)
	sent := <-done
	runtime.ReadMemStats(&after)
	st := hs.h.Stats()
	t.Logf("%d pings sent before the socket closed; heap %+d KiB", sent, (int64(after.HeapInuse)-int64(before.HeapInuse))>>10)
	if n := st.SlowConsumers.Load(); n != 1 {
		t.Errorf("Stats.SlowConsumers = %d, want 1: a client that reads no pongs must be closed as a slow consumer", n)
	}
}

// TestPingBursts: a client that sends pings in bursts and reads its pongs
// gets every one, in order, and the socket stays open. (A flood faster
// than the pongs can be written is closed as a slow consumer, as above.)
func TestPingBursts(t *testing.T) { inReadModes(t, testPingBursts) }

func testPingBursts(t *testing.T, m readMode) {
	const bursts, each = 50, 20
	_, c, s := echoHarness(t, m, WebSocketConfig{})
	for b := range bursts {
		var buf bytes.Buffer
		for i := range each {
			buf.Write(ws.MustCompileFrame(ws.MaskFrameInPlace(ws.NewPingFrame([]byte(fmt.Sprint(b, i))))))
		}
		if _, err := c.conn.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		for i := range each {
			c.expectFrame(ws.OpPong, fmt.Sprint(b, i))
		}
	}
	c.send("still open")
	expectMessage(t, s, []byte("still open"), false)
	c.expectFrame(ws.OpText, "still open")
}

// FuzzReadFrames feeds arbitrary bytes to an upgraded connection. Whatever
// they are, the transport must not panic, must end the socket once the
// client goes away, and may hand the socket only whole messages within
// MaxFrameSize, text ones valid UTF-8.
//
//	go test -run '^$' -fuzz FuzzReadFrames -fuzztime 30s ./transport/
func FuzzReadFrames(f *testing.F) {
	const maxFrame = 1 << 10
	frame := func(op ws.OpCode, fin bool, p []byte) []byte {
		return ws.MustCompileFrame(ws.MaskFrameInPlace(ws.NewFrame(op, fin, p)))
	}
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	f.Add(frame(ws.OpText, true, []byte("hello")))
	f.Add(frame(ws.OpBinary, true, []byte{0, 0xff}))
	f.Add(cat(frame(ws.OpText, false, []byte("he")), frame(ws.OpPing, true, nil), frame(ws.OpContinuation, true, []byte("llo"))))
	f.Add(frame(ws.OpText, true, []byte("\xff")))
	f.Add(cat(frame(ws.OpText, false, []byte("caf\xc3")), frame(ws.OpContinuation, true, []byte("\xa9"))))
	f.Add(frame(ws.OpText, true, bytes.Repeat([]byte("x"), maxFrame+1)))
	f.Add(frame(ws.OpClose, true, []byte{0x03, 0xe8, 'o', 'k'}))
	f.Add(frame(ws.OpClose, true, []byte{0x03}))
	f.Add(frame(ws.OpContinuation, true, []byte("stray")))
	f.Add(ws.MustCompileFrame(ws.NewTextFrame([]byte("unmasked"))))
	f.Add([]byte{0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})

	var bad sync.Mutex
	var problems []string
	check := func(_ *fakeSocket, data []byte, binary bool) {
		var p string
		switch {
		case len(data) > maxFrame:
			p = fmt.Sprintf("a %d-byte message reached the socket, above MaxFrameSize %d", len(data), maxFrame)
		case !binary && !utf8.Valid(data):
			p = fmt.Sprintf("text message %q is not UTF-8", data)
		}
		if p != "" {
			bad.Lock()
			problems = append(problems, p)
			bad.Unlock()
		}
	}
	// Both read paths, each with its own endpoint (the fakes' channels
	// tell their sockets apart).
	var harnesses []*harness
	for _, m := range readModes {
		if !m.parked && !pollerSupported {
			continue
		}
		e := newFakeEndpoint()
		e.frameBuf, e.onFrame = 1, check
		harnesses = append(harnesses, newHarness(f, m, WebSocketConfig{MaxFrameSize: maxFrame, CloseTimeout: 200 * time.Millisecond}, e))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, hs := range harnesses {
			c := hs.dial(t, "", ws.Dialer{})
			s := <-hs.ep.opened
			_ = c.conn.SetWriteDeadline(time.Now().Add(waitLimit))
			_, _ = c.conn.Write(data)
			c.conn.Close()
			s.awaitClose(t)
		}
		bad.Lock()
		defer bad.Unlock()
		for _, p := range problems {
			t.Error(p)
		}
		problems = nil
	})
}

// TestInvalidUTF8Shapes: RFC 6455 §8.1, a text message that is not UTF-8
// fails the connection with 1007 whatever its shape: fragmented, cut in
// the middle of a character at its end, or bigger than the read buffer.
// None of it reaches the socket.
func TestInvalidUTF8Shapes(t *testing.T) { inReadModes(t, testInvalidUTF8Shapes) }

func testInvalidUTF8Shapes(t *testing.T, m readMode) {
	big := bytes.Repeat([]byte("é"), 5000)
	for _, tc := range []struct {
		name  string
		parts [][]byte
	}{
		{"one frame", [][]byte{[]byte("ok\xc3\x28")}},
		{"fragments", [][]byte{[]byte("ok"), []byte("\xed\xa0\x80"), []byte("ok")}}, // a surrogate
		{"cut at the end", [][]byte{[]byte("caf"), []byte("\xc3")}},
		{"big", [][]byte{append(append([]byte(nil), big...), 0xff)}},
		{"big, fragmented", [][]byte{big, {0xf8, 0x88, 0x80, 0x80, 0x80}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs, c, s := echoHarness(t, m, WebSocketConfig{})
			for i, p := range tc.parts {
				op := ws.OpContinuation
				if i == 0 {
					op = ws.OpText
				}
				c.writeFrame(op, i == len(tc.parts)-1, true, p)
			}
			c.expectClose(1007)
			c.conn.Close()
			s.awaitClose(t)
			if n := hs.h.Stats().InvalidUTF8.Load(); n != 1 {
				t.Errorf("InvalidUTF8 = %d, want 1", n)
			}
			if len(s.frames) != 0 {
				t.Errorf("the invalid message reached HandleFrame")
			}
		})
	}
}
