package wsclient_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/transport/wsclient"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// frame is what the fake server received.
type frame struct {
	op   ws.OpCode
	data []byte
}

// fakeServer upgrades every request and hands the server side of the
// connection to script, with the frames the client sends arriving on recv.
type fakeServer struct {
	*httptest.Server
	queries chan string
}

func newFakeServer(t *testing.T, script func(conn net.Conn, recv <-chan frame)) *fakeServer {
	t.Helper()
	fs := &fakeServer{queries: make(chan string, 16)}
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.queries <- r.URL.RawQuery
		if r.URL.Query().Get("refuse") != "" {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte("go away"))
			return
		}
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		recv := make(chan frame, 64)
		go func() {
			defer close(recv)
			for {
				msgs, err := wsutil.ReadClientMessage(conn, nil)
				for _, m := range msgs {
					recv <- frame{m.OpCode, m.Payload}
				}
				if err != nil {
					return
				}
			}
		}()
		script(conn, recv)
		// Wait for the client to go away before closing.
		for range recv {
		}
	}))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *fakeServer) url() string {
	return "ws" + strings.TrimPrefix(fs.URL, "http") + "/socket/websocket"
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEncodeClientBinaryMatchesProtocolExample(t *testing.T) {
	// PROTOCOL.md §2.4: → push event "upload", payload de ad be ef.
	want, _ := hex.DecodeString("0001010606333772" + "6f6f6d3a3175706c6f6164deadbeef")
	got, err := wsclient.EncodeClientBinary(&channels.Message{
		JoinRef: channels.StringRef("3"), Ref: channels.StringRef("7"),
		Topic: "room:1", Event: "upload", Payload: []byte{0xde, 0xad, 0xbe, 0xef}, Binary: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("EncodeClientBinary = %x, want %x", got, want)
	}
	if _, err := wsclient.EncodeClientBinary(&channels.Message{Topic: strings.Repeat("t", 256), Event: "e"}); !errors.Is(err, channels.ErrFieldTooLong) {
		t.Fatalf("256-byte topic: err = %v, want ErrFieldTooLong", err)
	}
}

func TestDialRefusedReturnsStatusAndBody(t *testing.T) {
	fs := newFakeServer(t, func(net.Conn, <-chan frame) {})
	_, err := wsclient.Dial(testCtx(t), fs.url(), wsclient.Options{Params: map[string]string{"refuse": "1"}})
	var herr *wsclient.HandshakeError
	if !errors.As(err, &herr) {
		t.Fatalf("err = %v, want a *HandshakeError", err)
	}
	if herr.Status != http.StatusForbidden || string(herr.Body) != "go away" {
		t.Fatalf("refusal = %d %q, want 403 %q", herr.Status, herr.Body, "go away")
	}
	var status ws.StatusError
	if !errors.As(err, &status) || status != http.StatusForbidden {
		t.Fatalf("err does not unwrap to ws.StatusError(403): %v", err)
	}
}

func TestV2RoundTrip(t *testing.T) {
	fs := newFakeServer(t, func(conn net.Conn, recv <-chan frame) {
		// Join, then a push, then a binary push.
		join := <-recv
		if string(join.data) != `["1","1","room:1","phx_join",{"user":"ann"}]` {
			t.Errorf("join frame = %s", join.data)
		}
		_ = wsutil.WriteServerText(conn, []byte(`[null,null,"room:1","presence_diff",{}]`))
		_ = wsutil.WriteServerText(conn, []byte(`["1","1","room:1","phx_reply",{"status":"ok","response":{"a":1}}]`))
		push := <-recv
		if string(push.data) != `["1","2","room:1","new_msg",{"body":"hi"}]` {
			t.Errorf("push frame = %s", push.data)
		}
		bin := <-recv
		wantBin := append([]byte{0, 1, 1, 6, 4}, "13room:1ping\x01\x02"...) // join_ref "1", ref "3"
		if bin.op != ws.OpBinary || !bytes.Equal(bin.data, wantBin) {
			t.Errorf("binary push = %v %x, want %x", bin.op, bin.data, wantBin)
		}
		_ = wsutil.WriteServerBinary(conn, append([]byte{1, 1, 1, 6, 2}, append([]byte("13room:1ok"), 1, 2)...))
		_ = wsutil.WriteServerMessage(conn, ws.OpPing, []byte("hb"))
		pong := <-recv
		if pong.op != ws.OpPong || string(pong.data) != "hb" {
			t.Errorf("pong = %v %q", pong.op, pong.data)
		}
		_ = wsutil.WriteServerMessage(conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusGoingAway, "bye"))
		echo := <-recv
		if echo.op != ws.OpClose {
			t.Errorf("close echo = %v", echo.op)
		}
	})
	ctx := testCtx(t)
	c, err := wsclient.Dial(ctx, fs.url(), wsclient.Options{Params: map[string]string{"token": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if q := <-fs.queries; q != "token=x&vsn=2.0.0" {
		t.Errorf("query = %q", q)
	}
	reply, err := c.Join(ctx, "room:1", map[string]string{"user": "ann"})
	if err != nil {
		t.Fatal(err)
	}
	if reply.Status != "ok" || string(reply.Payload) != `{"a":1}` || reply.JoinRef != channels.StringRef("1") {
		t.Fatalf("join reply = %+v", reply)
	}
	if _, err := c.Push("room:1", "new_msg", map[string]string{"body": "hi"}); err != nil {
		t.Fatal(err)
	}
	ref, err := c.Push("room:1", "ping", channels.Binary{1, 2})
	if err != nil || ref != "3" {
		t.Fatalf("binary push: ref %q, err %v", ref, err)
	}
	breply, err := c.AwaitReply(ctx, "3")
	if err != nil {
		t.Fatal(err)
	}
	if !breply.Binary || breply.Status != "ok" || !bytes.Equal(breply.Payload, []byte{1, 2}) {
		t.Fatalf("binary reply = %+v", breply)
	}
	// The diff the join's Await passed over is still queued, first.
	diff, err := c.Next(ctx)
	if err != nil || diff.Event != "presence_diff" {
		t.Fatalf("queued diff = %v, %v", diff, err)
	}
	st, err := c.AwaitClose(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Received || st.Code != 1001 || st.Reason != "bye" {
		t.Fatalf("close status = %v", st)
	}
	if _, err := c.Next(ctx); !errors.Is(err, wsclient.ErrClosed) {
		t.Fatalf("Next after close: err = %v, want ErrClosed", err)
	}
}

func TestV1EncodingCarriesJoinRef(t *testing.T) {
	fs := newFakeServer(t, func(conn net.Conn, recv <-chan frame) {
		join := <-recv
		if string(join.data) != `{"topic":"room:1","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}` {
			t.Errorf("V1 join = %s", join.data)
		}
		_ = wsutil.WriteServerText(conn, []byte(`{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:1"}`))
		hb := <-recv
		if string(hb.data) != `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}` {
			t.Errorf("V1 heartbeat = %s", hb.data)
		}
	})
	ctx := testCtx(t)
	c, err := wsclient.Dial(ctx, fs.url(), wsclient.Options{Vsn: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reply, err := c.Join(ctx, "room:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if reply.Status != "ok" || string(reply.Payload) != "{}" || !reply.JoinRef.IsNull() {
		t.Fatalf("V1 join reply = %+v", reply)
	}
	if _, err := c.Heartbeat(); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(channels.Message{Topic: "room:1", Event: "x", Binary: true}); !errors.Is(err, channels.ErrBinaryUnsupported) {
		t.Fatalf("V1 binary send: err = %v", err)
	}
}

// A client that stops taking messages stops reading; Close still ends it.
func TestCloseEndsBlockedReader(t *testing.T) {
	fs := newFakeServer(t, func(conn net.Conn, recv <-chan frame) {
		for i := 0; i < 8; i++ {
			if wsutil.WriteServerText(conn, []byte(`[null,null,"t","e",{}]`)) != nil {
				return
			}
		}
	})
	ctx := testCtx(t)
	c, err := wsclient.Dial(ctx, fs.url(), wsclient.Options{Buffer: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Next(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	if st := c.Status(); !errors.Is(st.Err, wsclient.ErrClientClosed) {
		t.Fatalf("status after Close = %v", st)
	}
}

func TestAwaitHonoursContext(t *testing.T) {
	fs := newFakeServer(t, func(net.Conn, <-chan frame) {})
	c, err := wsclient.Dial(testCtx(t), fs.url(), wsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
