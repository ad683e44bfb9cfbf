package conformance

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/node"
)

// Limits on WebSocket messages in progress (README "Limits"): a message
// left unfinished, pings or not, is closed by --message-timeout; the
// node's buffers of messages in progress are bounded by
// --max-message-buffers.

// rawConn is a WebSocket connection driven frame by frame, for what the
// client library does not send: fragments.
type rawConn struct {
	t  *testing.T
	nc net.Conn
}

func (tn *testNode) dialRaw(t *testing.T) *rawConn {
	t.Helper()
	nc, _, _, err := ws.Dialer{Timeout: testTimeout}.Dial(context.Background(), tn.wsURL+"?vsn=2.0.0")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(testTimeout))
	return &rawConn{t: t, nc: nc}
}

func (c *rawConn) write(op ws.OpCode, fin bool, p []byte) error {
	_, err := c.nc.Write(ws.MustCompileFrame(ws.MaskFrameInPlace(ws.NewFrame(op, fin, p))))
	return err
}

// closeCode reads frames until a close frame, and returns its code. Pongs
// are skipped.
func (c *rawConn) closeCode() int {
	c.t.Helper()
	for {
		f, err := ws.ReadFrame(c.nc)
		if err != nil {
			c.t.Fatalf("reading: %v, want a close frame", err)
		}
		if f.Header.OpCode == ws.OpClose {
			if len(f.Payload) < 2 {
				return 1005
			}
			return int(f.Payload[0])<<8 | int(f.Payload[1])
		}
	}
}

func TestLimitMessageTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	tn := startNode(t, func(c *node.Config) { c.MessageTimeout = timeout })
	c := tn.dialRaw(t)
	if err := c.write(ws.OpText, false, []byte(`["1","1","conformance:lobby",`)); err != nil {
		t.Fatal(err)
	}
	// Pings keep the socket from its idle timeout, not its message from
	// its deadline.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(timeout / 10)
		defer tick.Stop()
		for range 100 {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if c.write(ws.OpPing, true, nil) != nil {
				return
			}
		}
	}()
	if code := c.closeCode(); code != 1008 {
		t.Fatalf("closed with %d, want 1008", code)
	}
	tn.expectHits(t, "message_timeout", 1)
}

func TestLimitMessageBuffers(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) { c.MaxMessageBuffers = 100 << 10 })
	part := bytes.Repeat([]byte(" "), 40<<10)
	holder := tn.dialRaw(t)
	if err := holder.write(ws.OpText, false, part); err != nil {
		t.Fatal(err)
	}
	// The pong comes once the fragment has been read.
	if err := holder.write(ws.OpPing, true, nil); err != nil {
		t.Fatal(err)
	}
	if f, err := ws.ReadFrame(holder.nc); err != nil || f.Header.OpCode != ws.OpPong {
		t.Fatalf("got %v %v, want a pong", f.Header.OpCode, err)
	}
	// A newer message that does not fit beside the holder's takes its
	// buffer: the holder, with the oldest message in progress, is closed.
	c := tn.dialRaw(t)
	if err := c.write(ws.OpText, false, bytes.Repeat([]byte(" "), 64<<10)); err != nil {
		t.Fatal(err)
	}
	if code := holder.closeCode(); code != 1013 {
		t.Fatalf("holder closed with %d, want 1013", code)
	}
	tn.expectHits(t, "message_buffers", 1)
	// Everyone else is served.
	tn.dial(t, v2).join(lobby, `{}`)
}

// A WebSocket upgrade with a request target above --max-url-length (a
// connect parameter of 20 KiB) is answered 414 and counted. (A request
// head over --max-header-bytes, 32 KiB, gets 431 before any handler.)
func TestLimitURLLength(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	nc, err := net.Dial("tcp", strings.TrimPrefix(tn.httpURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(testTimeout))
	req := "GET /socket/websocket?vsn=2.0.0&user=" + strings.Repeat("u", 20<<10) + " HTTP/1.1\r\nHost: x\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestURITooLong {
		t.Fatalf("HTTP %d, want 414", res.StatusCode)
	}
	tn.expectHits(t, "url_length", 1)
}
