package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/cmd/channelsd/app"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/test/nodetest"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// testTimeout bounds every test's waits; a test that needs it has failed.
const testTimeout = 20 * time.Second

// testNode is a node serving the default application with the
// conformance channel, listening on 127.0.0.1.
type testNode struct {
	*node.Node
	wsURL   string // ws://127.0.0.1:port/socket/websocket
	httpURL string // http://127.0.0.1:port
	api     *http.Client
}

// startNode starts a node; opts adjust its configuration. The node is
// shut down in t.Cleanup (after the test's clients, which are registered
// later and so cleaned up first).
func startNode(t *testing.T, opts ...func(*node.Config)) *testNode {
	t.Helper()
	n := nodetest.Start(t, append([]func(*node.Config){func(c *node.Config) {
		c.Home = app.DemoHandler("/socket")
		c.Logger = testLogger()
	}}, opts...)...)
	// Registered after the node's shutdown, so it runs first.
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	addr := n.Addr().String()
	return &testNode{
		Node:    n,
		wsURL:   "ws://" + addr + "/socket/websocket",
		httpURL: "http://" + addr,
		api:     &http.Client{Transport: tr, Timeout: testTimeout},
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("CONFORMANCE_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// withSocketHandler replaces the application's connect handler.
func withSocketHandler(h channels.SocketHandler) func(*node.Config) {
	return func(c *node.Config) { c.SocketHandler = h }
}

// post calls the node's HTTP API and returns the status code.
func (tn *testNode) post(t *testing.T, path, body string) int {
	t.Helper()
	resp, err := tn.api.Post(tn.httpURL+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// apiBroadcast publishes through POST /api/broadcast.
func (tn *testNode) apiBroadcast(t *testing.T, topic, event, payload string) {
	t.Helper()
	body := fmt.Sprintf(`{"topic":%s,"event":%s,"payload":%s}`, jsonOf(topic), jsonOf(event), payload)
	if status := tn.post(t, "/api/broadcast", body); status != http.StatusAccepted {
		t.Fatalf("POST /api/broadcast: status %d, want 202", status)
	}
}

// version is a protocol version under test.
type version struct {
	name string
	vsn  string
}

var (
	v2           = version{"V2", "2.0.0"}
	v1           = version{"V1", "1.0.0"}
	bothVersions = []version{v2, v1}
)

// frame renders a frame as a client sends it: a V2 array, or a V1 object
// that carries join_ref unless it is nil. Refs are nil (null), strings or
// numbers; payload is JSON text.
func (v version) frame(joinRef, ref any, topic, event, payload string) []byte {
	if v == v1 {
		jr := ""
		if joinRef != nil {
			jr = `,"join_ref":` + jsonOf(joinRef)
		}
		return fmt.Appendf(nil, `{"topic":%s,"event":%s,"payload":%s,"ref":%s%s}`,
			jsonOf(topic), jsonOf(event), payload, jsonOf(ref), jr)
	}
	return fmt.Appendf(nil, `[%s,%s,%s,%s,%s]`, jsonOf(joinRef), jsonOf(ref), jsonOf(topic), jsonOf(event), payload)
}

// want renders the frame the server must send: a V2 array, or a V1
// object, which never carries join_ref (§2.2).
func (v version) want(joinRef, ref any, topic, event, payload string) string {
	if v == v1 {
		return fmt.Sprintf(`{"topic":%s,"event":%s,"payload":%s,"ref":%s}`, jsonOf(topic), jsonOf(event), payload, jsonOf(ref))
	}
	return string(v.frame(joinRef, ref, topic, event, payload))
}

// reply renders a phx_reply payload.
func reply(status, response string) string {
	return fmt.Sprintf(`{"status":%s,"response":%s}`, jsonOf(status), response)
}

func jsonOf(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// sameJSON reports whether two JSON texts hold the same value; key order
// and spacing do not matter, a string "5" and a number 5 differ.
func sameJSON(a, b []byte) bool {
	va, ea := decodeJSON(a)
	vb, eb := decodeJSON(b)
	return ea == nil && eb == nil && reflect.DeepEqual(va, vb)
}

func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data")
	}
	return v, nil
}

// conn is a test's client connection with assertion helpers. Its methods
// fail the test that created it; call them from that test's goroutine.
type conn struct {
	*wsclient.Client
	t   *testing.T
	v   version
	ctx context.Context
}

// dial connects with vsn v and connect params (name, value pairs).
func (tn *testNode) dial(t *testing.T, v version, params ...string) *conn {
	t.Helper()
	p := map[string]string{}
	for i := 0; i+1 < len(params); i += 2 {
		p[params[i]] = params[i+1]
	}
	return tn.dialOpts(t, v, wsclient.Options{Params: p})
}

func (tn *testNode) dialOpts(t *testing.T, v version, opts wsclient.Options) *conn {
	t.Helper()
	ctx := testCtx(t)
	if opts.Vsn == "" && !opts.OmitVsn {
		opts.Vsn = v.vsn
	}
	c, err := wsclient.Dial(ctx, tn.wsURL, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", v.name, err)
	}
	t.Cleanup(func() { c.Close() })
	return &conn{Client: c, t: t, v: v, ctx: ctx}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// send writes a frame built with version.frame.
func (c *conn) send(joinRef, ref any, topic, event, payload string) {
	c.t.Helper()
	c.sendRaw(c.v.frame(joinRef, ref, topic, event, payload), false)
}

func (c *conn) sendRaw(data []byte, binary bool) {
	c.t.Helper()
	if err := c.SendRaw(data, binary); err != nil {
		c.t.Fatalf("send %q: %v", data, err)
	}
}

// next returns the next frame, failing the test after the timeout.
func (c *conn) next() wsclient.Message {
	c.t.Helper()
	m, err := c.Next(c.ctx)
	if err != nil {
		c.t.Fatalf("%s: waiting for the next frame: %v", c.v.name, err)
	}
	return m
}

// expect asserts that the next frame is the JSON text want.
func (c *conn) expect(want string) wsclient.Message {
	c.t.Helper()
	m := c.next()
	if m.Binary || !sameJSON(m.Raw, []byte(want)) {
		c.t.Fatalf("%s: unexpected frame\n got: %s\nwant: %s", c.v.name, m, want)
	}
	return m
}

// expectFrame asserts that the next frame is the one version.want renders.
func (c *conn) expectFrame(joinRef, ref any, topic, event, payload string) wsclient.Message {
	c.t.Helper()
	return c.expect(c.v.want(joinRef, ref, topic, event, payload))
}

// await returns the first frame match accepts, leaving others queued.
func (c *conn) await(what string, match func(wsclient.Message) bool) wsclient.Message {
	c.t.Helper()
	m, err := c.Await(c.ctx, match)
	if err != nil {
		c.t.Fatalf("%s: waiting for %s: %v (queued: %v)", c.v.name, what, err, c.Queued())
	}
	return m
}

// awaitFrame waits for the frame of topic and event and asserts it is the
// one version.want renders.
func (c *conn) awaitFrame(joinRef, ref any, topic, event, payload string) wsclient.Message {
	c.t.Helper()
	m := c.await(topic+" "+event, wsclient.IsEvent(topic, event))
	if want := c.v.want(joinRef, ref, topic, event, payload); m.Binary || !sameJSON(m.Raw, []byte(want)) {
		c.t.Fatalf("%s: unexpected %s frame\n got: %s\nwant: %s", c.v.name, event, m, want)
	}
	return m
}

// awaitReply waits for the reply to ref.
func (c *conn) awaitReply(ref string) wsclient.Message {
	c.t.Helper()
	return c.await("the reply to "+ref, wsclient.IsReply(ref))
}

// quiet asserts that no frame is queued or arrives before the reply to a
// heartbeat sent now: the server sends frames of one socket in order, so
// anything caused by earlier messages would come first.
func (c *conn) quiet() {
	c.t.Helper()
	ref, err := c.Heartbeat()
	if err != nil {
		c.t.Fatalf("heartbeat: %v", err)
	}
	m := c.next()
	if !wsclient.IsReply(ref)(m) || m.Topic != channels.TopicPhoenix || m.Status != "ok" {
		c.t.Fatalf("%s: unexpected frame before the heartbeat reply: %s", c.v.name, m)
	}
}

// settle discards every frame that arrives before the reply to a
// heartbeat sent now.
func (c *conn) settle() {
	c.t.Helper()
	ref, err := c.Heartbeat()
	if err != nil {
		c.t.Fatalf("heartbeat: %v", err)
	}
	for {
		if m := c.next(); wsclient.IsReply(ref)(m) {
			return
		}
	}
}

// join joins topic with params (JSON text) and asserts the ok reply; it
// returns the join_ref.
func (c *conn) join(topic, params string) string {
	c.t.Helper()
	m, err := c.Join(c.ctx, topic, json.RawMessage(params))
	if err != nil {
		c.t.Fatalf("%s: join %s: %v", c.v.name, topic, err)
	}
	if m.Status != "ok" {
		c.t.Fatalf("%s: join %s refused: %s", c.v.name, topic, m)
	}
	return c.JoinRef(topic)
}

// push sends event to topic with payload (JSON text) and returns the ref.
func (c *conn) push(topic, event, payload string) string {
	c.t.Helper()
	ref, err := c.Push(topic, event, json.RawMessage(payload))
	if err != nil {
		c.t.Fatalf("push %s %s: %v", topic, event, err)
	}
	return ref
}

// call pushes and asserts the reply's status and response (JSON text).
func (c *conn) call(topic, event, payload, status, response string) wsclient.Message {
	c.t.Helper()
	m := c.awaitReply(c.push(topic, event, payload))
	if m.Status != status || !sameJSON(m.Payload, []byte(response)) {
		c.t.Fatalf("%s: %s %s replied %s, want status %q response %s", c.v.name, topic, event, m, status, response)
	}
	return m
}

// awaitClose waits for the connection to end.
func (c *conn) awaitClose() wsclient.CloseStatus {
	c.t.Helper()
	st, err := c.AwaitClose(c.ctx)
	if err != nil {
		c.t.Fatalf("%s: waiting for the server to close: %v", c.v.name, err)
	}
	return st
}

// expectClose asserts that the server closes the connection with code.
func (c *conn) expectClose(code int) wsclient.CloseStatus {
	c.t.Helper()
	st := c.awaitClose()
	if !st.Received || st.Code != code {
		c.t.Fatalf("%s: connection ended with %v, want close code %d", c.v.name, st, code)
	}
	return st
}

// payloadOf decodes a frame's JSON payload into v.
func payloadOf(t *testing.T, m wsclient.Message, v any) {
	t.Helper()
	if m.Binary || m.Err != nil {
		t.Fatalf("frame %s has no JSON payload (err %v)", m, m.Err)
	}
	if err := json.Unmarshal(m.Payload, v); err != nil {
		t.Fatalf("payload of %s: %v", m, err)
	}
}
