package transport

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/test/logtest"
)

func TestMain(m *testing.M) {
	if otherMain != nil {
		if code, ok := otherMain(); ok {
			os.Exit(code)
		}
	}
	goleak.VerifyTestMain(m)
}

// otherMain, when set and reporting true, runs instead of the tests: the
// test binary in another role (a benchmark's child process).
var otherMain func() (code int, ok bool)

// waitLimit bounds every wait in these tests, so that a bug fails a test
// instead of hanging it. Nothing waits for it to pass.
const waitLimit = 10 * time.Second

// ---------------------------------------------------------------------
// Fakes of the channels side.

type frameRec struct {
	data   []byte
	binary bool
}

type fakeEndpoint struct {
	connect func(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error)
	// echo makes every socket send each message back.
	echo bool
	// onFrame, if set, runs inside HandleFrame.
	onFrame func(s *fakeSocket, data []byte, binary bool)
	// onOpen, if set, runs inside Open.
	onOpen func(s *fakeSocket)
	// frameBuf is the capacity of each socket's frames channel (0: 4096).
	frameBuf int

	mu      sync.Mutex
	infos   []*channels.ConnectInfo
	sockets []*fakeSocket
	opened  chan *fakeSocket
}

func newFakeEndpoint() *fakeEndpoint {
	return &fakeEndpoint{opened: make(chan *fakeSocket, 1024)}
}

func (e *fakeEndpoint) Connect(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
	e.mu.Lock()
	e.infos = append(e.infos, info)
	e.mu.Unlock()
	if e.connect != nil {
		return e.connect(ctx, info)
	}
	return channels.Identity{ID: "user"}, nil
}

func (e *fakeEndpoint) Open(conn channels.Conn, ser channels.Serializer, id channels.Identity) Socket {
	s := &fakeSocket{
		ep:     e,
		conn:   conn,
		ser:    ser,
		id:     id,
		frames: make(chan frameRec, cmp.Or(e.frameBuf, 4096)),
		closed: make(chan struct{}),
	}
	e.mu.Lock()
	e.sockets = append(e.sockets, s)
	e.mu.Unlock()
	if e.onOpen != nil {
		e.onOpen(s)
	}
	e.opened <- s
	return s
}

func (e *fakeEndpoint) lastInfo(t testing.TB) *channels.ConnectInfo {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.infos) == 0 {
		t.Fatalf(
			"Connect was not called",
		)
	}
	return e.infos[len(e.infos)-1]
}

func (e *fakeEndpoint) connects() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.infos)
}

func (e *fakeEndpoint) allSockets() []*fakeSocket {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*fakeSocket(nil), e.sockets...)
}

type fakeSocket struct {
	ep     *fakeEndpoint
	conn   channels.Conn
	ser    channels.Serializer
	id     channels.Identity
	frames chan frameRec
	closes atomic.Int32
	closed chan struct{}
}

func (s *fakeSocket) HandleFrame(data []byte, binary bool) {
	cp := append([]byte(nil), data...)
	// The transport may reuse data after the call: scribble over it to
	// catch anyone who keeps it.
	for i := range data {
		data[i] = 0xAA
	}
	if s.ep.onFrame != nil {
		s.ep.onFrame(s, cp, binary)
	}
	if s.ep.echo {
		_ = s.conn.Send(channels.Frame{Data: cp, Binary: binary})
	}
	select {
	case s.frames <- frameRec{cp, binary}:
	default:
	}
}

func (s *fakeSocket) HandleClose() {
	if s.closes.Add(1) == 1 {
		close(s.closed)
	}
}

func (s *fakeSocket) nextFrame(t testing.TB) frameRec {
	t.Helper()
	select {
	case f := <-s.frames:
		return f
	case <-time.After(waitLimit):
		t.Fatalf(
			"no frame reached HandleFrame within %v",
			waitLimit,
		)
	}
	return frameRec{}
}

func (s *fakeSocket) awaitClose(t testing.TB) {
	t.Helper()
	select {
	case <-s.closed:
	case <-time.After(waitLimit):
		t.Fatalf(
			"HandleClose was not called within %v",
			waitLimit,
		)
	}
}

// ---------------------------------------------------------------------
// Read modes.

// readMode is one of the transport's read paths. Every test that opens
// connections runs in each (inReadModes), so that both stay tested on
// Linux: event-driven reads (the default there) and ParkedReads (the
// default elsewhere, and the fallback).
type readMode struct {
	name   string
	parked bool
	// noBatches: the write path of WebSocketConfig.NoSendBatches, which on
	// Linux is only the fallback of the default.
	noBatches bool
}

var (
	eventMode  = readMode{name: "events"}
	parkedMode = readMode{name: "parked", parked: true}
	readModes  = []readMode{eventMode, parkedMode}
	// writeModes adds, for the tests of the write path, event-driven
	// reads with a write(2) per write.
	writeModes = []readMode{eventMode, parkedMode, {name: "events-write2", noBatches: true}}
)

// inReadModes runs f as a subtest per read mode. Off Linux the event mode
// is the parked one, and is skipped.
func inReadModes(t *testing.T, f func(t *testing.T, m readMode)) {
	t.Helper()
	inModes(t, readModes, f)
}

// inWriteModes runs f as a subtest per mode of writeModes.
func inWriteModes(t *testing.T, f func(t *testing.T, m readMode)) {
	t.Helper()
	inModes(t, writeModes, f)
}

func inModes(t *testing.T, modes []readMode, f func(t *testing.T, m readMode)) {
	t.Helper()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			if !m.parked && !pollerSupported {
				t.Skip("no event-driven reads on this platform")
			}
			f(t, m)
		})
	}
}

// ---------------------------------------------------------------------
// Server harness.

type harness struct {
	ep  *fakeEndpoint
	h   *WebSocketHandler
	srv *httptest.Server
	url string // ws://127.0.0.1:port/socket/websocket
}

func testLogger() *slog.Logger {
	if os.Getenv("TRANSPORT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// logBuffer is the shared readable log destination (test/logtest).
type logBuffer = logtest.Buffer

// newHarness starts a WebSocketHandler in read mode m on 127.0.0.1 with a
// fake endpoint. Cleanup, in order: clients close (registered by dial),
// every opened socket must see HandleClose, the server stops, the handler
// closes (its poller and sweeper end), no goroutine may be left, and
// HandleClose must have run exactly once per socket.
func newHarness(t testing.TB, m readMode, cfg WebSocketConfig, ep *fakeEndpoint) *harness {
	t.Helper()
	// Goroutines of the test runner (benchmarks run in their own) are not
	// ours; TestMain's check still sees leaks between tests.
	running := goleak.IgnoreCurrent()
	if ep == nil {
		ep = newFakeEndpoint()
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = waitLimit
	}
	if cfg.CloseTimeout == 0 {
		cfg.CloseTimeout = waitLimit / 4
	}
	cfg.ParkedReads = m.parked
	cfg.NoSendBatches = cfg.NoSendBatches || m.noBatches
	h, err := NewWebSocketHandler(ep, cfg)
	if err != nil {
		t.Fatalf(
			"NewWebSocketHandler: %v",
			err,
		)
	}
	mux := http.NewServeMux()
	mux.Handle("/socket/websocket", h)
	srv := httptest.NewServer(mux)
	hs := &harness{ep: ep, h: h, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http") + "/socket/websocket"}

	t.Cleanup(func() {
		for _, s := range ep.allSockets() {
			if n := s.closes.Load(); n != 1 {
				t.Errorf(
					"HandleClose ran %d times, want exactly 1",
					n,
				)
			}
		}
	})
	t.Cleanup(func() { goleak.VerifyNone(t, running) })
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf(
				"WebSocketHandler.Close: %v",
				err,
			)
		}
	})
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		for _, s := range ep.allSockets() {
			s.awaitClose(t)
		}
		if n := h.Stats().Open.Load(); n != 0 {
			t.Errorf(
				"Stats.Open = %d after every socket closed, want 0",
				n,
			)
		}
	})
	return hs
}

// ---------------------------------------------------------------------
// Client side.

type client struct {
	t    testing.TB
	conn net.Conn
	r    io.Reader
	hs   ws.Handshake
}

// dial connects with d to the harness with the given query string.
func (hs *harness) dial(t testing.TB, query string, d ws.Dialer) *client {
	t.Helper()
	c, err := hs.tryDial(t, query, d)
	if err != nil {
		t.Fatalf(
			"dial %q: %v",
			query,
			err,
		)
	}
	return c
}

func (hs *harness) tryDial(t testing.TB, query string, d ws.Dialer) (*client, error) {
	t.Helper()
	u := hs.url
	if query != "" {
		u += "?" + query
	}
	if d.Timeout == 0 {
		d.Timeout = waitLimit
	}
	conn, br, h, err := d.Dial(context.Background(), u)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	c := &client{t: t, conn: conn, r: conn, hs: h}
	if br != nil {
		c.r = io.MultiReader(br, conn)
	}
	return c, nil
}

// writeFrame writes one frame, masked as a client must (RFC 6455 §5.3)
// unless masked is false.
func (c *client) writeFrame(op ws.OpCode, fin, masked bool, payload []byte) {
	c.t.Helper()
	if err := c.tryWriteFrame(op, fin, masked, 0, payload); err != nil {
		c.t.Fatalf(
			"client write: %v",
			err,
		)
	}
}

func (c *client) tryWriteFrame(op ws.OpCode, fin, masked bool, rsv byte, payload []byte) error {
	h := ws.Header{Fin: fin, Rsv: rsv, OpCode: op, Length: int64(len(payload)), Masked: masked}
	p := append([]byte(nil), payload...)
	if masked {
		h.Mask = ws.NewMask()
		ws.Cipher(p, h.Mask, 0)
	}
	bw := bufio.NewWriter(c.conn)
	if err := ws.WriteHeader(bw, h); err != nil {
		return err
	}
	if _, err := bw.Write(p); err != nil {
		return err
	}
	return bw.Flush()
}

func (c *client) send(text string) { c.writeFrame(ws.OpText, true, true, []byte(text)) }

// readFrame reads the next server frame, which must not be masked.
func (c *client) readFrame() (ws.Header, []byte) {
	c.t.Helper()
	h, p, err := c.tryReadFrame()
	if err != nil {
		c.t.Fatalf(
			"client read: %v",
			err,
		)
	}
	return h, p
}

func (c *client) tryReadFrame() (ws.Header, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(waitLimit))
	h, err := ws.ReadHeader(c.r)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server frame is masked")
	}
	p := make([]byte, h.Length)
	_, err = io.ReadFull(c.r, p)
	return h, p, err
}

// expectFrame reads the next frame and checks its opcode and payload.
func (c *client) expectFrame(op ws.OpCode, payload string) {
	c.t.Helper()
	h, p := c.readFrame()
	if h.OpCode != op || string(p) != payload || !h.Fin {
		c.t.Fatalf(
			"got frame op=%v fin=%v %.80q, want op=%v fin=true %.80q",
			h.OpCode, h.Fin, p, op, payload,
		)
	}
}

// expectClose reads the next frame, which must be a close frame with code
// (0: no body), and returns its reason.
func (c *client) expectClose(code int) string {
	c.t.Helper()
	h, p := c.readFrame()
	if h.OpCode != ws.OpClose {
		c.t.Fatalf(
			"got frame op=%v %q, want a close frame with code %d",
			h.OpCode, p, code,
		)
	}
	if code == 0 {
		if len(p) != 0 {
			c.t.Fatalf(
				"close body %q, want none",
				p,
			)
		}
		return ""
	}
	if len(p) < 2 {
		c.t.Fatalf(
			"close body %q, want code %d",
			p, code,
		)
	}
	if got := int(binary.BigEndian.Uint16(p)); got != code {
		c.t.Fatalf(
			"close code %d (reason %q), want %d",
			got, p[2:], code,
		)
	}
	return string(p[2:])
}

// expectEOF checks that the server closed the connection.
func (c *client) expectEOF() {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(waitLimit))
	n, err := io.Copy(io.Discard, c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		c.t.Fatalf(
			"after close: %d more bytes then %v, want EOF",
			n, err,
		)
	}
	if n != 0 {
		c.t.Fatalf(
			"after close: %d more bytes, want none",
			n,
		)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "reset")
}

// closeBodyOf builds a close frame body.
func closeBodyOf(code int, reason string) []byte {
	b := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	return append(b, reason...)
}

// rawRequest sends a hand-written HTTP/1.1 request for the harness's
// WebSocket path and returns the response with its body read.
func (hs *harness) rawRequest(t testing.TB, method, query string, header http.Header) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", hs.srv.Listener.Addr().String(), waitLimit)
	if err != nil {
		t.Fatalf(
			"dial: %v",
			err,
		)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(waitLimit))
	path := "/socket/websocket"
	if query != "" {
		path += "?" + query
	}
	var b strings.Builder
	b.WriteString(method + " " + path + " HTTP/1.1\r\nHost: " + hs.srv.Listener.Addr().String() + "\r\n")
	for k, vs := range header {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatalf(
			"write request: %v",
			err,
		)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf(
			"read response: %v",
			err,
		)
	}
	var body []byte
	if resp.StatusCode == http.StatusSwitchingProtocols && hs.ep != nil {
		// Open runs after the 101 is on its way: wait for it, so that
		// the harness's cleanup knows the socket.
		select {
		case <-hs.ep.opened:
		case <-time.After(waitLimit):
			t.Fatalf(
				"upgraded, but Open was not called within %v",
				waitLimit,
			)
		}
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, err = io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf(
				"read body: %v",
				err,
			)
		}
	}
	resp.Body.Close()
	return resp, string(body)
}

// upgradeHeader is a valid set of RFC 6455 §4.1 handshake headers.
func upgradeHeader() http.Header {
	return http.Header{
		"Upgrade":               {"websocket"},
		"Connection":            {"Upgrade"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
		"Sec-Websocket-Version": {"13"},
	}
}
