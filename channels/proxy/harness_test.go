package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub/local"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(stormNodeEnv); url != "" {
		// The test binary run as BenchmarkConnectStorm's node.
		os.Exit(runStormNode(url))
	}
	goleak.VerifyTestMain(m)
}

var testSecret = []byte("a secret shared with the backend")

// backend is an httptest server that checks each request's signature and
// call header, records its body, and answers with the handler for its
// path.
type backend struct {
	t   testing.TB
	srv *httptest.Server

	mu     sync.Mutex
	calls  map[string][]json.RawMessage // path -> bodies
	routes map[string]http.HandlerFunc
	leaves chan LeaveRequest
}

func newBackend(t testing.TB) *backend {
	b := &backend{t: t, calls: map[string][]json.RawMessage{}, routes: map[string]http.HandlerFunc{}, leaves: make(chan LeaveRequest, 16)}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	return b
}

// handle answers path with a fixed JSON body, or with h.
func (b *backend) answer(path, body string) {
	b.handle(path, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) })
}

func (b *backend) handle(path string, h http.HandlerFunc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.routes[path] = h
}

func (b *backend) url(path string) string { return b.srv.URL + path }

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	if !Verify(testSecret, body, r.Header.Get(SignatureHeader)) {
		b.t.Errorf("%s: bad signature %q", r.URL.Path, r.Header.Get(SignatureHeader))
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || r.Header.Get(CallHeader) == "" {
		b.t.Errorf("%s: %s with Content-Type %q, call %q", r.URL.Path, r.Method, r.Header.Get("Content-Type"), r.Header.Get(CallHeader))
	}
	b.mu.Lock()
	b.calls[r.URL.Path] = append(b.calls[r.URL.Path], body)
	h := b.routes[r.URL.Path]
	b.mu.Unlock()
	if r.URL.Path == "/leave" {
		var l LeaveRequest
		_ = json.Unmarshal(body, &l)
		select {
		case b.leaves <- l:
		default: // a benchmark's thousand leaves: nobody reads them
		}
	}
	if h == nil {
		_, _ = io.WriteString(w, `{"status":"ok"}`)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body)) // read again by h
	h(w, r)
}

// bodies returns the bodies received on path.
func (b *backend) bodies(path string) []json.RawMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]json.RawMessage(nil), b.calls[path]...)
}

func (b *backend) count(path string) int { return len(b.bodies(path)) }

// env is an Endpoint with the in-memory PubSub and presence, whose sockets
// the test feeds V2 frames without a transport.
type env struct {
	t      testing.TB
	ep     *channels.Endpoint
	client *Client
}

func newEnv(t testing.TB, cfg Config, handler channels.SocketHandler, routes func(*channels.Router, *Client)) *env {
	t.Helper()
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	client, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	router := &channels.Router{}
	routes(router, client)
	ps := local.New()
	tracker := presence.NewLocal(ps)
	ep, err := channels.NewEndpoint(channels.EndpointConfig{
		Router: router, Handler: handler, PubSub: ps, Presence: tracker,
		Logger:               slog.New(slog.DiscardHandler),
		MaxMessagesPerSecond: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		_ = tracker.Close()
		_ = ps.Close()
	})
	return &env{t: t, ep: ep, client: client}
}

type fakeConn struct {
	frames chan channels.Frame
}

func (c *fakeConn) Send(f channels.Frame) error {
	select {
	case c.frames <- f:
		return nil
	default:
		return channels.ErrSlowConsumer
	}
}

func (c *fakeConn) Close(int, string) {}

type sock struct {
	t    testing.TB
	rt   *channels.Runtime
	s    *channels.Socket
	id   string // the socket id the connect gave
	conn *fakeConn
	ref  int
}

func (e *env) connect(info *channels.ConnectInfo) (*sock, error) {
	e.t.Helper()
	id, err := e.ep.Runtime().Connect(context.Background(), info)
	if err != nil {
		return nil, err
	}
	conn := &fakeConn{frames: make(chan channels.Frame, 1024)}
	rt := e.ep.Runtime()
	s := &sock{t: e.t, rt: rt, s: rt.Open(conn, channels.V2, id), id: id.ID, conn: conn}
	e.t.Cleanup(func() { rt.HandleClose(s.s) })
	return s, nil
}

func (e *env) open() *sock {
	e.t.Helper()
	s, err := e.connect(&channels.ConnectInfo{Params: map[string]string{}, Transport: "websocket"})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// push sends [joinRef, ref, topic, event, payload] and returns the ref.
func (s *sock) push(joinRef, topic, event, payload string) string {
	s.t.Helper()
	s.ref++
	ref := strconv.Itoa(s.ref)
	var jr any
	if joinRef != "" {
		jr = joinRef
	}
	f, err := json.Marshal([]any{jr, ref, topic, event, json.RawMessage(payload)})
	if err != nil {
		s.t.Fatal(err)
	}
	s.rt.HandleFrame(s.s, f, false)
	return ref
}

// join joins topic and returns the join reply's status and response.
func (s *sock) join(topic, params string) (joinRef, status, response string) {
	s.t.Helper()
	s.ref++
	ref := strconv.Itoa(s.ref)
	f, _ := json.Marshal([]any{ref, ref, topic, channels.EventJoin, json.RawMessage(params)})
	s.rt.HandleFrame(s.s, f, false)
	st, resp := s.reply(ref)
	return ref, st, resp
}

// joinNoWait sends a join of topic and returns its ref, its join_ref too.
func (s *sock) joinNoWait(topic, params string) string {
	s.t.Helper()
	s.ref++
	ref := strconv.Itoa(s.ref)
	f, _ := json.Marshal([]any{ref, ref, topic, channels.EventJoin, json.RawMessage(params)})
	s.rt.HandleFrame(s.s, f, false)
	return ref
}

type frame struct {
	joinRef, ref *string
	topic, event string
	payload      json.RawMessage
}

// next returns the next frame, failing the test after 5s: a socket that
// hangs fails here.
func (s *sock) next() frame {
	s.t.Helper()
	select {
	case f := <-s.conn.frames:
		var arr []json.RawMessage
		if err := json.Unmarshal(f.Data, &arr); err != nil || len(arr) != 5 {
			s.t.Fatalf("frame %s: %v", f.Data, err)
		}
		var fr frame
		_ = json.Unmarshal(arr[0], &fr.joinRef)
		_ = json.Unmarshal(arr[1], &fr.ref)
		_ = json.Unmarshal(arr[2], &fr.topic)
		_ = json.Unmarshal(arr[3], &fr.event)
		fr.payload = arr[4]
		return fr
	case <-time.After(5 * time.Second):
		s.t.Fatal("no frame within 5s")
	}
	return frame{}
}

// reply skips to the reply to ref and returns its status and response.
func (s *sock) reply(ref string) (status, response string) {
	s.t.Helper()
	for {
		f := s.next()
		if f.event != channels.EventReply || f.ref == nil || *f.ref != ref {
			continue
		}
		var r struct {
			Status   string          `json:"status"`
			Response json.RawMessage `json:"response"`
		}
		if err := json.Unmarshal(f.payload, &r); err != nil {
			s.t.Fatal(err)
		}
		return r.Status, string(r.Response)
	}
}

// event skips to the next frame of event.
func (s *sock) event(event string) frame {
	s.t.Helper()
	for {
		if f := s.next(); f.event == event {
			return f
		}
	}
}

// jsonEq reports whether two JSON texts are the same value.
func jsonEq(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}
