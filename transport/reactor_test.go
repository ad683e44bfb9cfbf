package transport

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// eventModeGoroutineSlack is how many goroutines above the count before
// the connections opened the event mode tolerates once they are idle:
// none is expected (the poller and the sweeper already ran for the warm-up
// connection), a couple may be on their way out.
const eventModeGoroutineSlack = 2

func needEvents(t *testing.T) {
	t.Helper()
	if !pollerSupported {
		t.Skip("no event-driven reads on this platform")
	}
}

// eventually waits until cond holds, or fails the test with what.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(
				"after %v: %s",
				waitLimit, what,
			)
		}
		time.Sleep(time.Millisecond)
	}
}

// armed reports whether c waits in the poller.
func armed(c *wsConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.armed
}

func (h *WebSocketHandler) runningReactor() *reactor {
	h.rmu.Lock()
	defer h.rmu.Unlock()
	return h.reactor
}

func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	needEvents(t)
	const n = 50
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, eventMode, WebSocketConfig{}, ep)
	warm := hs.dial(t, "", ws.Dialer{})
	warm.send("warm")
	warm.expectFrame(ws.OpText, "warm")
	<-ep.opened
	g0 := runtime.NumGoroutine()
	for i := range n {
		c := hs.dial(t, "", ws.Dialer{})
		s := <-ep.opened
		c.send("hello")
		c.expectFrame(ws.OpText, "hello")
		if i%2 == 0 {
			c.writeFrame(ws.OpPing, true, true, []byte("p"))
			c.expectFrame(ws.OpPong, "p")
		}
		eventually(t, "the connection is not armed in the poller", func() bool { return armed(s.conn.(*wsConn)) })
	}
	eventually(t, "idle connections hold goroutines", func() bool {
		return runtime.NumGoroutine() <= g0+eventModeGoroutineSlack
	})
}

// bare reports whether c holds its bare descriptor rather than a net.Conn
// or file (wsconn_fd.go).
func bare(c *wsConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nc == nil && !c.fdClosed()
}

// TestIdleConnectionsAreBare: a connection that waits in the poller holds
// its bare descriptor, not a net.Conn (whose runtime poll descriptor and
// addresses were most of an idle socket's memory), and reads, writes and
// closes all the same; it takes a file only to wait (the rest of a frame
// on its way), and lets it go when it waits in the poller again.
func TestIdleConnectionsAreBare(t *testing.T) {
	needEvents(t)
	const n = 20
	hs, first, s0 := echoHarness(t, eventMode, WebSocketConfig{})
	st := hs.h.Stats()
	clients := []*client{first}
	socks := []*fakeSocket{s0}
	for range n - 1 {
		clients = append(clients, hs.dial(t, "vsn=2.0.0", ws.Dialer{}))
		socks = append(socks, <-hs.ep.opened)
	}
	for i, c := range clients {
		msg := fmt.Sprint("hello ", i)
		c.send(msg)
		c.expectFrame(ws.OpText, msg) // a write on the bare descriptor
		expectMessage(t, socks[i], []byte(msg), false)
	}
	for i, s := range socks {
		wc := s.conn.(*wsConn)
		eventually(t, fmt.Sprint("connection ", i, " is not armed"), func() bool { return armed(wc) })
		if !bare(wc) {
			t.Fatalf("idle connection %d holds a net.Conn or file", i)
		}
	}
	if d, a := st.Detached.Load(), st.Attached.Load(); d != n || a != 0 {
		t.Fatalf("Detached %d, Attached %d; want %d (each connection once, as it first waited) and 0", d, a, n)
	}

	// Half a frame: the reader must wait for the rest, with a file.
	c, s := clients[0], socks[0]
	payload := []byte("split across two writes")
	h := ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(payload)), Masked: true, Mask: ws.NewMask()}
	var frame bytes.Buffer
	_ = ws.WriteHeader(&frame, h)
	masked := append([]byte(nil), payload...)
	ws.Cipher(masked, h.Mask, 0)
	frame.Write(masked)
	b := frame.Bytes()
	if _, err := c.conn.Write(b[:len(b)-5]); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reader did not take a file to wait for the rest of the frame", func() bool { return st.Attached.Load() == 1 })
	if _, err := c.conn.Write(b[len(b)-5:]); err != nil {
		t.Fatal(err)
	}
	c.expectFrame(ws.OpText, string(payload))
	expectMessage(t, s, payload, false)
	wc := s.conn.(*wsConn)
	eventually(t, "the connection did not let its file go as it waited again", func() bool { return armed(wc) && bare(wc) })
	if d := st.Detached.Load(); d != n+1 {
		t.Fatalf("Detached %d, want %d", d, n+1)
	}

	// The close handshake, from the server, on a bare connection; and
	// from a client.
	wc.Close(1000, "bye")
	if reason := c.expectClose(1000); reason != "bye" {
		t.Fatalf("close reason %q", reason)
	}
	c.expectEOF()
	c.conn.Close()
	s.awaitClose(t)
	clients[1].writeFrame(ws.OpClose, true, true, ws.NewCloseFrameBody(1000, ""))
	clients[1].expectClose(1000)
	clients[1].expectEOF()
	clients[1].conn.Close()
	socks[1].awaitClose(t)
	if open := st.Open.Load(); open != n-2 {
		t.Fatalf("%d connections open, want %d", open, n-2)
	}
}

func TestSlowFrame(t *testing.T) { inReadModes(t, testSlowFrame) }

// testSlowFrame: a client that sends a frame one byte at a time, each well
// within IdleTimeout, is closed (1001) once the frame has taken longer
// than IdleTimeout: a slowloris must not pin a reader.
func testSlowFrame(t *testing.T, m readMode) {
	const idle = 300 * time.Millisecond
	hs, c, s := echoHarness(t, m, WebSocketConfig{IdleTimeout: idle, CloseTimeout: idle})
	c.send("first")
	c.expectFrame(ws.OpText, "first")
	expectMessage(t, s, []byte("first"), false)

	// 156 bytes at one per idle/6: about 7.8 s, far longer than the
	// IdleTimeout that must cut the frame short, and within waitLimit.
	payload := []byte(strings.Repeat("z", 150))
	h := ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(payload)), Masked: true, Mask: ws.NewMask()}
	var frame strings.Builder
	_ = ws.WriteHeader(&frame, h)
	ws.Cipher(payload, h.Mask, 0)
	frame.Write(payload)
	stop := make(chan struct{})
	done := make(chan struct{})
	var sent atomic.Int64 // bytes of the frame written
	go func() {
		defer close(done)
		tick := time.NewTicker(idle / 6)
		defer tick.Stop()
		for _, b := range []byte(frame.String()) {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := c.conn.Write([]byte{b}); err != nil {
				return
			}
			sent.Add(1)
		}
	}()
	if reason := c.expectClose(1001); reason != "idle timeout" {
		t.Errorf(
			"reason %q",
			reason,
		)
	}
	// The close cut the frame short: that, rather than a wall-clock
	// bound on when the close came, which a loaded machine stretches,
	// shows that the timeout, not the frame's end, closed it.
	if n := sent.Load(); n >= int64(frame.Len()) {
		t.Errorf(
			"closed after the whole frame (%d bytes) had been sent, want it cut short after about %v",
			n, idle,
		)
	}
	close(stop)
	<-done
	c.conn.Close()
	s.awaitClose(t)
	if len(s.frames) != 0 {
		t.Errorf(
			"the slow frame reached HandleFrame",
		)
	}
	if n := hs.h.Stats().IdleTimeouts.Load(); n != 1 {
		t.Errorf(
			"IdleTimeouts = %d, want 1",
			n,
		)
	}
}

// TestStaleEventIgnored: a readiness event that carries an old
// generation (left over from a closed connection whose fd number was
// reused, or from an earlier arming) must not start a reader on the
// connection that has the fd now.
func TestStaleEventIgnored(t *testing.T) {
	needEvents(t)
	_, c, s := echoHarness(t, eventMode, WebSocketConfig{})
	c.send("a")
	c.expectFrame(ws.OpText, "a")
	wc := s.conn.(*wsConn)
	eventually(t, "the connection is not armed", func() bool { return armed(wc) })
	wc.mu.Lock()
	r, fd, gen := wc.r, wc.fd, wc.gen
	wc.mu.Unlock()

	r.dispatch(pollEvent{fd: fd, gen: gen - 1})
	r.dispatch(pollEvent{fd: fd, gen: gen + 1})
	if !armed(wc) {
		t.Fatal("an event with another generation claimed the connection")
	}
	// The current generation does: a reader starts and waits for data
	// (in the runtime's poller) without a readiness of ours.
	r.dispatch(pollEvent{fd: fd, gen: gen})
	if armed(wc) {
		t.Fatal("an event with the connection's generation did not claim it")
	}
	// That claim came without a readiness: the poller's registration is
	// still armed with gen, and reports "b" too, maybe only after the
	// reader has armed the connection again; with another generation.
	c.send("b")
	c.expectFrame(ws.OpText, "b")
	expectMessage(t, s, []byte("a"), false)
	expectMessage(t, s, []byte("b"), false)
	eventually(t, "the connection is not armed again", func() bool { return armed(wc) })
	r.dispatch(pollEvent{fd: fd, gen: gen})
	if !armed(wc) {
		t.Fatal("an event of an earlier arming claimed the connection")
	}
	c.send("c")
	c.expectFrame(ws.OpText, "c")
	expectMessage(t, s, []byte("c"), false)
	eventually(t, "the connection is not armed again", func() bool { return armed(wc) })
}

// TestReactorStopsWithLastConnection: a handler without connections runs
// no goroutine, even without Close, and starts again with the next.
func TestReactorStopsWithLastConnection(t *testing.T) {
	needEvents(t)
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, eventMode, WebSocketConfig{}, ep)
	g0 := runtime.NumGoroutine()
	for round := range 2 {
		c := hs.dial(t, "", ws.Dialer{})
		s := <-ep.opened
		c.send("x")
		c.expectFrame(ws.OpText, "x")
		r := hs.h.runningReactor()
		if r == nil {
			t.Fatalf("round %d: no reactor with a connection open", round)
		}
		c.conn.Close()
		s.awaitClose(t)
		eventually(t, "the reactor still runs without connections, or its poller is open", func() bool {
			hs.h.rmu.Lock()
			defer hs.h.rmu.Unlock()
			return hs.h.reactor == nil && r.fdsClosed && runtime.NumGoroutine() <= g0
		})
	}
}

// TestHandlerClose: Close ends the poller and the sweeper; connections
// open then go on with parked readers, as do new ones.
func TestHandlerClose(t *testing.T) {
	needEvents(t)
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, eventMode, WebSocketConfig{}, ep)
	idle := hs.dial(t, "", ws.Dialer{})
	sIdle := <-ep.opened
	idle.send("1")
	idle.expectFrame(ws.OpText, "1")
	busy := hs.dial(t, "", ws.Dialer{})
	sBusy := <-ep.opened
	busy.send("2")
	busy.expectFrame(ws.OpText, "2")
	eventually(t, "not armed", func() bool { return armed(sIdle.conn.(*wsConn)) && armed(sBusy.conn.(*wsConn)) })
	g := runtime.NumGoroutine()

	if err := hs.h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := hs.h.Close(); err != nil {
		t.Fatal(err)
	}
	if hs.h.runningReactor() != nil {
		t.Fatal("a reactor runs after Close")
	}
	for _, s := range []*fakeSocket{sIdle, sBusy} {
		wc := s.conn.(*wsConn)
		wc.mu.Lock()
		if wc.r != nil || wc.registered || wc.armed {
			t.Errorf("after Close: connection still in the reactor")
		}
		wc.mu.Unlock()
	}
	// Two parked readers instead of the poller and the sweeper.
	eventually(t, "goroutines after Close", func() bool { return runtime.NumGoroutine() <= g })

	busy.send("3")
	busy.expectFrame(ws.OpText, "3")
	idle.writeFrame(ws.OpPing, true, true, []byte("p"))
	idle.expectFrame(ws.OpPong, "p")

	late := hs.dial(t, "", ws.Dialer{})
	sLate := <-ep.opened
	late.send("4")
	late.expectFrame(ws.OpText, "4")
	if wc := sLate.conn.(*wsConn); wc.r != nil {
		t.Error("a connection upgraded after Close uses a reactor")
	}
	sBusy.conn.Close(1001, "bye")
	busy.expectClose(1001)
	busy.conn.Close()
	sBusy.awaitClose(t)
}

// TestTLSUsesParkedReads: over crypto/tls the descriptor's readiness says
// nothing about buffered records, so such connections are not watched.
func TestTLSUsesParkedReads(t *testing.T) {
	needEvents(t)
	ep := newFakeEndpoint()
	ep.echo = true
	h, err := NewWebSocketHandler(ep, WebSocketConfig{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { _ = h.Close() })
	hs := &harness{ep: ep, h: h, srv: srv, url: "wss" + strings.TrimPrefix(srv.URL, "https")}
	tlsConf := srv.Client().Transport.(*http.Transport).TLSClientConfig
	c := hs.dial(t, "", ws.Dialer{TLSConfig: tlsConf})
	s := <-ep.opened
	c.send("over tls")
	c.expectFrame(ws.OpText, "over tls")
	if h.runningReactor() != nil || s.conn.(*wsConn).r != nil {
		t.Error("a TLS connection uses the reactor")
	}
	c.conn.Close()
	s.awaitClose(t)
}

// TestConcurrentTraffic: many connections busy at once, ending every way
// (client close handshake, client vanishing, server close, idle). The
// harness checks HandleClose ran once per socket and nothing leaked.
func TestConcurrentTraffic(t *testing.T) {
	inReadModes(t, func(t *testing.T, m readMode) { concurrentTraffic(t, m, false) })
}

// TestConcurrentTrafficHandlerClose: the same, with the handler closed in
// the middle of it, so connections move to parked readers while busy.
func TestConcurrentTrafficHandlerClose(t *testing.T) {
	needEvents(t)
	concurrentTraffic(t, eventMode, true)
}

func concurrentTraffic(t *testing.T, m readMode, closeHandler bool) {
	const (
		conns = 24
		msgs  = 100
	)
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, m, WebSocketConfig{IdleTimeout: 2 * time.Second, CloseTimeout: 500 * time.Millisecond}, ep)
	type pair struct {
		c *client
		s *fakeSocket
	}
	ps := make([]pair, conns)
	for i := range ps {
		c := hs.dial(t, "", ws.Dialer{})
		ps[i] = pair{c, <-ep.opened}
	}
	errs := make(chan error, conns)
	for i, p := range ps {
		go func() {
			errs <- func() error {
				for j := range msgs {
					msg := []byte(strings.Repeat("m", j%300))
					if err := p.c.tryWriteFrame(ws.OpText, true, true, 0, msg); err != nil {
						return err
					}
					if j%7 == 0 {
						if err := p.c.tryWriteFrame(ws.OpPing, true, true, 0, []byte("p")); err != nil {
							return err
						}
					}
					h, got, err := p.c.tryReadFrame()
					if err != nil || h.OpCode != ws.OpText || string(got) != string(msg) {
						return fmt.Errorf("conn %d msg %d: %v %d bytes %v", i, j, h.OpCode, len(got), err)
					}
					if j%7 == 0 {
						if h, _, err := p.c.tryReadFrame(); err != nil || h.OpCode != ws.OpPong {
							return fmt.Errorf("conn %d: pong: %v %v", i, h.OpCode, err)
						}
					}
				}
				switch i % 4 {
				case 0: // close handshake from the client
					_ = p.c.tryWriteFrame(ws.OpClose, true, true, 0, closeBodyOf(1000, ""))
					if h, _, err := p.c.tryReadFrame(); err != nil || h.OpCode != ws.OpClose {
						return fmt.Errorf("conn %d: close echo: %v %v", i, h.OpCode, err)
					}
					p.c.conn.Close()
				case 1: // the client vanishes
					p.c.conn.Close()
				case 2: // the server closes
					p.s.conn.Close(1012, "restart")
					if h, _, err := p.c.tryReadFrame(); err != nil || h.OpCode != ws.OpClose {
						return fmt.Errorf("conn %d: server close: %v %v", i, h.OpCode, err)
					}
					p.c.conn.Close()
				case 3: // silence: the idle timeout
					if h, _, err := p.c.tryReadFrame(); err != nil || h.OpCode != ws.OpClose {
						return fmt.Errorf("conn %d: idle close: %v %v", i, h.OpCode, err)
					}
					p.c.conn.Close()
				}
				return nil
			}()
		}()
	}
	if closeHandler {
		time.Sleep(20 * time.Millisecond)
		if err := hs.h.Close(); err != nil {
			t.Error(err)
		}
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, p := range ps {
		p.s.awaitClose(t)
	}
}
