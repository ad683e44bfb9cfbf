package app

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub/local"
	"github.com/channelsd/channelsd/transport"
)

// The harness runs the application on a real Endpoint with the in-memory
// PubSub and presence tracker, and feeds sockets V2 frames directly,
// without a network transport.

type env struct {
	t  *testing.T
	ep *channels.Endpoint
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	return newEnvRouter(t, opts, func(opts Options) *channels.Router { return Router(opts) })
}

// newEnvRouter is newEnv with the routes router makes of opts (the
// endpoint added).
func newEnvRouter(t *testing.T, opts Options, router func(Options) *channels.Router) *env {
	t.Helper()
	ps := local.New()
	// Unpaced: every presence change is its own diff, at once, so that
	// the tests read each right after the change (presence's own tests
	// cover pacing).
	tracker := presence.NewLocalWith(ps, presence.LocalOptions{MaxCoalesce: -1})
	e := &env{t: t}
	if opts.Endpoint == nil {
		opts.Endpoint = func() *channels.Endpoint { return e.ep }
	}
	ep, err := channels.NewEndpoint(channels.EndpointConfig{
		Router:   router(opts),
		Handler:  SocketHandler(opts),
		PubSub:   ps,
		Presence: tracker,
		Logger:   slog.New(slog.DiscardHandler),
		// The application's own checks are under test, not the
		// endpoint's limits (a zero value would be the default).
		MaxPayloadSize:       -1,
		MaxTopicLength:       -1,
		MaxEventLength:       -1,
		MaxMessagesPerSecond: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.ep = ep
	t.Cleanup(func() {
		_ = tracker.Close()
		_ = ps.Close()
	})
	return e
}

type closeInfo struct {
	code   int
	reason string
}

// fakeConn is a channels.Conn that queues frames for the test.
type fakeConn struct {
	frames chan channels.Frame
	closed chan closeInfo
}

func (c *fakeConn) Send(f channels.Frame) error {
	select {
	case c.frames <- f:
		return nil
	default:
		return channels.ErrSlowConsumer
	}
}

func (c *fakeConn) Close(code int, reason string) {
	select {
	case c.closed <- closeInfo{code, reason}:
	default:
	}
}

type client struct {
	t    *testing.T
	sock transport.Socket
	conn *fakeConn
	ref  int
}

// connect runs the SocketHandler with params and opens a V2 socket.
func (e *env) connect(params map[string]string) *client {
	e.t.Helper()
	id, err := e.ep.Runtime().Connect(context.Background(), &channels.ConnectInfo{Params: params, Transport: "websocket"})
	if err != nil {
		e.t.Fatalf("connect refused: %v", err)
	}
	conn := &fakeConn{frames: make(chan channels.Frame, 256), closed: make(chan closeInfo, 1)}
	c := &client{t: e.t, sock: transport.FromEndpoint(e.ep).Open(conn, channels.V2, id), conn: conn}
	e.t.Cleanup(c.sock.HandleClose)
	return c
}

func (c *client) nextRef() string {
	c.ref++
	return strconv.Itoa(c.ref)
}

// push sends a text frame with a JSON payload and returns its ref. An
// empty joinRef is sent as null.
func (c *client) push(joinRef, topic, event, payload string) string {
	c.t.Helper()
	ref := c.nextRef()
	var jr any
	if joinRef != "" {
		jr = joinRef
	}
	frame, err := json.Marshal([]any{jr, ref, topic, event, json.RawMessage(payload)})
	if err != nil {
		c.t.Fatal(err)
	}
	c.sock.HandleFrame(frame, false)
	return ref
}

// pushBinary sends a binary frame and returns its ref.
func (c *client) pushBinary(joinRef, topic, event string, payload []byte) string {
	c.t.Helper()
	ref := c.nextRef()
	f, err := channels.EncodeClientBinary(nil, &channels.Message{
		JoinRef: channels.StringRef(joinRef), Ref: channels.StringRef(ref),
		Topic: topic, Event: event, Payload: payload, Binary: true,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.sock.HandleFrame(f.Data, true)
	return ref
}

// join joins topic with params, expects an ok reply and returns the
// join_ref and the response.
func (c *client) join(topic, params string) (string, json.RawMessage) {
	c.t.Helper()
	ref := c.nextRef()
	frame, _ := json.Marshal([]any{ref, ref, topic, "phx_join", json.RawMessage(params)})
	c.sock.HandleFrame(frame, false)
	m := c.next()
	if m.Event != "phx_reply" || m.Ref != ref || m.Status != "ok" {
		c.t.Fatalf("join %s: got %+v", topic, m)
	}
	return ref, m.Payload
}

// msg is a decoded server frame. For replies, Status is set and Payload
// is the response.
type msg struct {
	JoinRef string // "" for null
	Ref     string
	Topic   string
	Event   string
	Status  string
	Payload json.RawMessage
	Binary  bool
}

func (c *client) next() msg {
	c.t.Helper()
	select {
	case f := <-c.conn.frames:
		return decode(c.t, f)
	case <-time.After(2 * time.Second):
		c.t.Fatal("timed out waiting for a frame")
		return msg{}
	}
}

// nextEvent skips frames until one with event arrives.
func (c *client) nextEvent(event string) msg {
	c.t.Helper()
	for {
		if m := c.next(); m.Event == event {
			return m
		}
	}
}

// drain discards the frames already queued.
func (c *client) drain() {
	for {
		select {
		case <-c.conn.frames:
		default:
			return
		}
	}
}

// none checks that no frame arrives for a short while.
func (c *client) none() {
	c.t.Helper()
	select {
	case f := <-c.conn.frames:
		c.t.Fatalf("unexpected frame %+v", decode(c.t, f))
	case <-time.After(50 * time.Millisecond):
	}
}

func decode(t *testing.T, f channels.Frame) msg {
	t.Helper()
	if f.Binary {
		m, err := channels.DecodeServerBinary(f.Data)
		if err != nil {
			t.Fatalf("bad binary frame: %v", err)
		}
		return msg{JoinRef: m.JoinRef.Text(), Ref: m.Ref.Text(), Topic: m.Topic, Event: m.Event, Status: m.Status, Payload: m.Payload, Binary: true}
	}
	var arr [5]json.RawMessage
	if err := json.Unmarshal(f.Data, &arr); err != nil {
		t.Fatalf("bad text frame %s: %v", f.Data, err)
	}
	var m msg
	var jr, ref *string
	_ = json.Unmarshal(arr[0], &jr)
	_ = json.Unmarshal(arr[1], &ref)
	_ = json.Unmarshal(arr[2], &m.Topic)
	_ = json.Unmarshal(arr[3], &m.Event)
	if jr != nil {
		m.JoinRef = *jr
	}
	if ref != nil {
		m.Ref = *ref
	}
	m.Payload = arr[4]
	if m.Event == "phx_reply" {
		var r struct {
			Status   string          `json:"status"`
			Response json.RawMessage `json:"response"`
		}
		if err := json.Unmarshal(arr[4], &r); err != nil {
			t.Fatalf("bad reply %s: %v", f.Data, err)
		}
		m.Status, m.Payload = r.Status, r.Response
	}
	return m
}

// jsonEq reports whether two JSON texts hold the same value.
func jsonEq(t *testing.T, got json.RawMessage, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got invalid JSON %q: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want invalid JSON %q: %v", want, err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// expectReply reads the next frame and checks it is the reply to ref.
func (c *client) expectReply(ref, status, response string) msg {
	c.t.Helper()
	m := c.next()
	if m.Event != "phx_reply" || m.Ref != ref || m.Status != status {
		c.t.Fatalf("want %s reply to %s, got %+v (payload %s)", status, ref, m, m.Payload)
	}
	if response != "" {
		jsonEq(c.t, m.Payload, response)
	}
	return m
}
