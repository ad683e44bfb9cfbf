package transport

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub/local"
)

// closeSignal wraps an Endpoint so a test can await HandleClose of the
// real sockets.
type closeSignal struct {
	Endpoint
	closed chan struct{}
}

type signalSocket struct {
	Socket
	closed chan struct{}
}

func (e closeSignal) Open(conn channels.Conn, ser channels.Serializer, id channels.Identity) Socket {
	return signalSocket{e.Endpoint.Open(conn, ser, id), e.closed}
}

func (s signalSocket) HandleClose() {
	s.Socket.HandleClose()
	s.closed <- struct{}{}
}

// TestWithChannelsEndpoint runs the transport against the real socket
// runtime: PROTOCOL.md §11 items 1 and 5, and a node-wide close.
func TestWithChannelsEndpoint(t *testing.T) { inReadModes(t, testWithChannelsEndpoint) }

func testWithChannelsEndpoint(t *testing.T, m readMode) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs after the clients' cleanups
	ps := local.New()
	t.Cleanup(func() { ps.Close() })
	ep, err := channels.NewEndpoint(channels.EndpointConfig{
		Router:   &channels.Router{},
		PubSub:   ps,
		Presence: presence.NewLocal(ps),
		Logger:   testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	sig := closeSignal{FromEndpoint(ep), make(chan struct{}, 4)}
	h, err := NewWebSocketHandler(sig, WebSocketConfig{Logger: testLogger(), ParkedReads: m.parked})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	hs := &harness{srv: srv, h: h, url: "ws" + strings.TrimPrefix(srv.URL, "http")}

	v2 := hs.dial(t, "vsn=2.0.0", ws.Dialer{})
	v2.send(`[null,"5","phoenix","heartbeat",{}]`)
	expectJSON(t, v2, `[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]`)

	v1 := hs.dial(t, "", ws.Dialer{})
	v1.send(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"6"}`)
	expectJSON(t, v1, `{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"6"}`)

	if _, err := hs.tryDial(t, "vsn=3.0.0", ws.Dialer{}); err == nil || err.Error() != ws.StatusError(http.StatusForbidden).Error() {
		t.Errorf(
			"vsn=3.0.0: %v, want HTTP 403",
			err,
		)
	}

	// Drain: every socket closes with 1012 (PROTOCOL.md §5.3), never 1000.
	ep.Runtime().CloseAll(1012, "service restart")
	for _, c := range []*client{v2, v1} {
		c.expectClose(1012)
		c.conn.Close()
	}
	<-sig.closed
	<-sig.closed
	if n := ep.SocketCount(); n != 0 {
		t.Errorf(
			"SocketCount = %d after every socket closed",
			n,
		)
	}
}

// expectJSON reads a text frame and compares it with want as JSON (key
// order carries no meaning, PROTOCOL.md notation).
func expectJSON(t *testing.T, c *client, want string) {
	t.Helper()
	h, p := c.readFrame()
	var got, exp any
	if h.OpCode != ws.OpText || json.Unmarshal(p, &got) != nil || json.Unmarshal([]byte(want), &exp) != nil || !reflect.DeepEqual(got, exp) {
		t.Fatalf(
			"got op=%v %s, want %s",
			h.OpCode, p, want,
		)
	}
}
