package transport

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// Bounds on what a client can make a socket hold on the read side
// (README "Limits"): a message in progress must end in time whatever
// control frames come between its fragments, and all the sockets' buffers
// of messages in progress share one budget.

func TestMessageTimeout(t *testing.T) { inReadModes(t, testMessageTimeout) }

func testMessageTimeout(t *testing.T, m readMode) {
	const timeout = 300 * time.Millisecond
	hs, c, s := echoHarness(t, m, WebSocketConfig{MessageTimeout: timeout})

	// A message whose fragments come in time is unaffected, pings between
	// them included. They go out back to back: a round trip between them
	// could take longer than the timeout on a loaded machine.
	c.writeFrame(ws.OpText, false, true, []byte("a"))
	c.writeFrame(ws.OpPing, true, true, []byte("p"))
	c.writeFrame(ws.OpContinuation, true, true, []byte("b"))
	c.expectFrame(ws.OpPong, "p")
	expectMessage(t, s, []byte("ab"), false)
	c.expectFrame(ws.OpText, "ab")

	// A message left unfinished is closed by its deadline, though pings
	// keep the socket far from its idle timeout (waitLimit).
	begun := time.Now()
	c.writeFrame(ws.OpText, false, true, bytes.Repeat([]byte("x"), 10_000))
	for i := 0; ; i++ {
		if i == 200 {
			t.Fatalf("no close %v after the first fragment, want 1008 after %v", time.Since(begun), timeout)
		}
		if err := c.tryWriteFrame(ws.OpPing, true, true, 0, []byte("keep")); err != nil {
			break // closed meanwhile: the close frame is waiting to be read
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(waitLimit))
		h, p, err := c.tryReadFrame()
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
		if h.OpCode == ws.OpClose {
			checkCloseBody(t, p, channels.ClosePolicy, "message timeout")
			break
		}
		if h.OpCode != ws.OpPong {
			t.Fatalf("got op %v, want a pong or a close", h.OpCode)
		}
		time.Sleep(timeout / 10) // pacing the pings, not synchronisation
	}
	if took := time.Since(begun); took < timeout {
		t.Errorf("closed %v after the first fragment, before the %v timeout", took, timeout)
	}
	s.awaitClose(t)
	st := hs.h.Stats()
	if n := st.MessageTimeouts.Load(); n != 1 {
		t.Errorf("Stats.MessageTimeouts = %d, want 1", n)
	}
	if n := st.IdleTimeouts.Load(); n != 0 {
		t.Errorf("Stats.IdleTimeouts = %d, want 0", n)
	}
	if n := st.MessageBuffers.Load(); n != 0 {
		t.Errorf("Stats.MessageBuffers = %d after the socket ended, want 0", n)
	}
}

// TestMessageTimeoutMidFrame: a single frame whose payload trickles in
// stops at the message deadline too, not at the idle timeout.
func TestMessageTimeoutMidFrame(t *testing.T) { inReadModes(t, testMessageTimeoutMidFrame) }

func testMessageTimeoutMidFrame(t *testing.T, m readMode) {
	const timeout = 300 * time.Millisecond
	hs, c, s := echoHarness(t, m, WebSocketConfig{MessageTimeout: timeout})
	payload := bytes.Repeat([]byte("y"), 20_000)
	frame := ws.MustCompileFrame(ws.MaskFrameInPlace(ws.NewFrame(ws.OpBinary, true, payload)))
	if _, err := c.conn.Write(frame[:len(frame)-1]); err != nil {
		t.Fatal(err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(waitLimit))
	h, p, err := c.tryReadFrame()
	if err != nil || h.OpCode != ws.OpClose {
		t.Fatalf("got op %v err %v, want a close", h.OpCode, err)
	}
	checkCloseBody(t, p, channels.ClosePolicy, "message timeout")
	s.awaitClose(t)
	if n := hs.h.Stats().MessageTimeouts.Load(); n != 1 {
		t.Errorf("Stats.MessageTimeouts = %d, want 1", n)
	}
}

// setBudget changes h's MaxMessageBuffers, for a test that needs the
// budget just above what sockets hold.
func setBudget(h *WebSocketHandler, n int64) {
	h.budget.mu.Lock()
	h.cfg.MaxMessageBuffers = n
	h.budget.mu.Unlock()
}

func checkCloseBody(t *testing.T, p []byte, code int, reason string) {
	t.Helper()
	if len(p) < 2 || int(p[0])<<8|int(p[1]) != code || string(p[2:]) != reason {
		t.Fatalf("close body %q, want code %d reason %q", p, code, reason)
	}
}

func TestMessageBuffersBudget(t *testing.T) { inReadModes(t, testMessageBuffersBudget) }

func testMessageBuffersBudget(t *testing.T, m readMode) {
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, m, WebSocketConfig{MaxMessageBuffers: 1 << 20}, ep)
	st := hs.h.Stats()

	// a holds a message in progress, and most of the budget: its
	// buffer's size depends on what the pool hands out, so the budget is
	// set to it and 8 KiB.
	a := hs.dial(t, "", ws.Dialer{})
	sa := <-ep.opened
	part := bytes.Repeat([]byte("a"), 40<<10)
	a.writeFrame(ws.OpBinary, false, true, part)
	a.writeFrame(ws.OpPing, true, true, nil)
	a.expectFrame(ws.OpPong, "")
	if n := st.MessageBuffers.Load(); n < 40<<10 || n > 100<<10 {
		t.Fatalf("Stats.MessageBuffers = %d with one 40 KiB fragment held, want 40..100 KiB", n)
	}
	setBudget(hs.h, st.MessageBuffers.Load()+8<<10)

	// b's message, newer, does not fit beside a's: b takes a's buffer,
	// and a, the oldest message in progress, is closed with 1013.
	b := hs.dial(t, "", ws.Dialer{})
	sb := <-ep.opened
	b.writeFrame(ws.OpBinary, false, true, part)
	if reason := a.expectClose(channels.CloseTryAgainLater); reason != "message buffers full" {
		t.Errorf("a: close reason %q, want \"message buffers full\"", reason)
	}
	sa.awaitClose(t)
	if n := st.MessageBuffersFull.Load(); n != 1 {
		t.Errorf("Stats.MessageBuffersFull = %d, want 1", n)
	}
	b.writeFrame(ws.OpPing, true, true, nil)
	b.expectFrame(ws.OpPong, "")

	// c begins a message after b's; when b's then needs more than c's
	// leaves, b is refused: nothing older than b holds anything. c is
	// unaffected.
	setBudget(hs.h, st.MessageBuffers.Load()+32<<10)
	c := hs.dial(t, "", ws.Dialer{})
	sc := <-ep.opened
	c.writeFrame(ws.OpBinary, false, true, part[:10<<10])
	c.writeFrame(ws.OpPing, true, true, nil)
	c.expectFrame(ws.OpPong, "")
	// 100 KiB in all would not fit beside c's, whatever size classes
	// the buffers grow by.
	_ = b.tryWriteFrame(ws.OpContinuation, false, true, 0, bytes.Repeat([]byte("b"), 60<<10))
	if reason := b.expectClose(channels.CloseTryAgainLater); reason != "message buffers full" {
		t.Errorf("b: close reason %q, want \"message buffers full\"", reason)
	}
	sb.awaitClose(t)
	if n := st.MessageBuffersFull.Load(); n != 2 {
		t.Errorf("Stats.MessageBuffersFull = %d, want 2", n)
	}

	// c's finished message gives its bytes back.
	c.writeFrame(ws.OpContinuation, true, true, []byte("!"))
	whole := append(append([]byte(nil), part[:10<<10]...), '!')
	expectMessage(t, sc, whole, true)
	c.expectFrame(ws.OpBinary, string(whole))
	// Small messages, which never leave the read buffer, take nothing
	// from the budget: they go on whatever it holds.
	c.send("small")
	c.expectFrame(ws.OpText, "small")
	if n := st.MessageBuffers.Load(); n != 0 {
		t.Errorf("Stats.MessageBuffers = %d with no message in progress, want 0", n)
	}
}

// TestMessageBuffersHeldFullByOldMessages: sockets that keep the budget
// full with messages they never finish cannot make a newer client's
// message fail. The newcomer's 8 KiB message (over the read buffer)
// arrives whole and its socket stays open; the socket with the oldest
// unfinished message is closed (1013) to make room, the others go on.
func TestMessageBuffersHeldFullByOldMessages(t *testing.T) {
	inReadModes(t, testMessageBuffersHeldFullByOldMessages)
}

func testMessageBuffersHeldFullByOldMessages(t *testing.T, m readMode) {
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newHarness(t, m, WebSocketConfig{MaxMessageBuffers: 1 << 20}, ep)
	st := hs.h.Stats()
	// Each holder's buffer is at least 64 KiB, which no buffer from the
	// pool exceeds: the newcomer's needs take one holder's, however they
	// were sized.
	held := bytes.Repeat([]byte("h"), 64<<10)
	var holders []*client
	var holderSocks []*fakeSocket
	for range 3 {
		h := hs.dial(t, "", ws.Dialer{})
		holderSocks = append(holderSocks, <-ep.opened)
		h.writeFrame(ws.OpText, false, true, held)
		h.writeFrame(ws.OpPing, true, true, nil)
		h.expectFrame(ws.OpPong, "")
		holders = append(holders, h)
	}
	// The buffers' sizes depend on what the pool hands out; the budget
	// is set to what the holders hold and 6 KiB: the newcomer's message
	// needs 8 KiB of buffer, in two steps of 4, and the second does not
	// fit.
	setBudget(hs.h, st.MessageBuffers.Load()+6<<10)

	c := hs.dial(t, "", ws.Dialer{})
	sc := <-ep.opened
	msg := bytes.Repeat([]byte("m"), 8<<10)
	c.writeFrame(ws.OpText, true, true, msg)
	expectMessage(t, sc, msg, false)
	c.expectFrame(ws.OpText, string(msg))
	c.send("still here")
	c.expectFrame(ws.OpText, "still here")

	if reason := holders[0].expectClose(channels.CloseTryAgainLater); reason != "message buffers full" {
		t.Errorf("oldest holder: close reason %q, want \"message buffers full\"", reason)
	}
	holderSocks[0].awaitClose(t)
	for i, h := range holders[1:] {
		h.writeFrame(ws.OpPing, true, true, nil)
		h.expectFrame(ws.OpPong, "")
		h.writeFrame(ws.OpContinuation, true, true, []byte("!"))
		whole := append(append([]byte(nil), held...), '!')
		expectMessage(t, holderSocks[i+1], whole, false)
		h.expectFrame(ws.OpText, string(whole))
		// The pong comes after the reader has let the buffer go.
		h.writeFrame(ws.OpPing, true, true, nil)
		h.expectFrame(ws.OpPong, "")
	}
	if n := st.MessageBuffersFull.Load(); n != 1 {
		t.Errorf("Stats.MessageBuffersFull = %d, want 1 (the oldest holder)", n)
	}
	if n := st.MessageBuffers.Load(); n != 0 {
		t.Errorf("Stats.MessageBuffers = %d with no message in progress, want 0", n)
	}
}

// TestUnfinishedMessagesRetainedHeap measures what sockets holding
// unfinished fragmented messages pin, with pings keeping them alive:
// with the budget, about the budget, whatever the number of sockets.
//
//	go test -run TestUnfinishedMessagesRetainedHeap -v ./transport/
//
// RETENTION_BUDGET=-1 shows the heap without a budget; RETENTION_FRAGMENT
// sets the size of each socket's unfinished fragment (default 128 KiB).
func TestUnfinishedMessagesRetainedHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("opens many connections")
	}
	const n = 200
	budget := int64(4 << 20)
	fragment := 128 << 10
	if v, err := strconv.ParseInt(os.Getenv("RETENTION_BUDGET"), 10, 64); err == nil {
		budget = v
	}
	if v, err := strconv.Atoi(os.Getenv("RETENTION_FRAGMENT")); err == nil {
		fragment = v
	}
	ep := newFakeEndpoint()
	ep.frameBuf = 1
	hs := newHarness(t, parkedMode, WebSocketConfig{MaxMessageBuffers: budget, MaxFrameSize: 2 << 20}, ep)
	warm := hs.dial(t, "", ws.Dialer{})
	<-ep.opened
	warm.send("warm")

	runtime.GC()
	debug.FreeOSMemory()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	part := bytes.Repeat([]byte("f"), fragment)
	held, refused := 0, 0
	for range n {
		c := hs.dial(t, "", ws.Dialer{})
		<-ep.opened
		_ = c.tryWriteFrame(ws.OpBinary, false, true, 0, part)
		_ = c.tryWriteFrame(ws.OpPing, true, true, 0, nil)
		_ = c.conn.SetReadDeadline(time.Now().Add(waitLimit))
		h, p, err := c.tryReadFrame()
		switch {
		case err == nil && h.OpCode == ws.OpPong:
			held++
		case err == nil && h.OpCode == ws.OpClose:
			checkCloseBody(t, p, channels.CloseTryAgainLater, "message buffers full")
			refused++
		default:
			t.Fatalf("socket %d: op %v err %v, want a pong or a close", held+refused, h.OpCode, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d sockets, %d KiB unfinished each, budget %d KiB: %d answered, %d refused, %d closed 1013 in all; heap +%.1f MiB (%.0f KiB per socket); Stats.MessageBuffers %.1f MiB",
		n, fragment>>10, budget>>10, held, refused, hs.h.Stats().MessageBuffersFull.Load(), float64(grown)/(1<<20), float64(grown)/n/1024, float64(hs.h.Stats().MessageBuffers.Load())/(1<<20))
	if budget > 0 {
		// Each newcomer takes the buffers of the oldest holders, which
		// are closed (1013): all are answered, some are closed later.
		if held == 0 || hs.h.Stats().MessageBuffersFull.Load() == 0 {
			t.Errorf("%d held and %d closed 1013, want some of each", held, hs.h.Stats().MessageBuffersFull.Load())
		}
		// The budget plus some KiB per socket of both ends' connection
		// state (pooled buffers, the fakes, the test's clients): about 10
		// KiB measured, under the race detector too. Without the budget
		// the fragments alone would take 25 MiB.
		if limit := budget + n*32<<10; grown > limit {
			t.Errorf("heap grew by %d bytes, want at most %d (the budget and 32 KiB per socket)", grown, limit)
		}
	}
}

// TestBigMessageLeavesNoBuffer: once a big message is handed over, an
// idle socket holds none of its buffer.
func TestBigMessageLeavesNoBuffer(t *testing.T) { inReadModes(t, testBigMessageLeavesNoBuffer) }

func testBigMessageLeavesNoBuffer(t *testing.T, m readMode) {
	if testing.Short() {
		t.Skip("sends 50 MiB")
	}
	const n = 50
	ep := newFakeEndpoint()
	ep.frameBuf = 1
	// The last client sends its message after the other 49 have sent
	// theirs: under the race detector on a loaded machine that took
	// longer than the harness's idle timeout (waitLimit), and the server
	// rightly closed it first.
	hs := newHarness(t, m, WebSocketConfig{IdleTimeout: time.Minute}, ep)
	warm := hs.dial(t, "", ws.Dialer{})
	<-ep.opened
	warm.send("warm")
	big := bytes.Repeat([]byte("B"), DefaultMaxFrameSize)
	var clients []*client
	for range n {
		c := hs.dial(t, "", ws.Dialer{})
		<-ep.opened
		// Fill the fake's one-frame channel, so that it keeps none of the
		// big messages.
		c.send("first")
		c.writeFrame(ws.OpPing, true, true, nil)
		c.expectFrame(ws.OpPong, "")
		clients = append(clients, c)
	}
	runtime.GC()
	debug.FreeOSMemory()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, c := range clients {
		c.writeFrame(ws.OpBinary, false, true, big[:len(big)/2])
		c.writeFrame(ws.OpContinuation, true, true, big[len(big)/2:])
		c.writeFrame(ws.OpPing, true, true, nil)
		c.expectFrame(ws.OpPong, "")
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d idle sockets after a 1 MiB message each: heap %+d KiB", n, grown>>10)
	if grown > n*64<<10 {
		t.Errorf("heap grew by %d KiB over %d idle sockets, want at most 64 KiB each: a big message's buffer is kept", grown>>10, n)
	}
	if v := hs.h.Stats().MessageBuffers.Load(); v != 0 {
		t.Errorf("Stats.MessageBuffers = %d with no message in progress, want 0", v)
	}
}

// TestConnectParamsDoNotPinTheRequest: an application that keeps a short
// query parameter for the socket's life (a user name in the assigns)
// keeps that parameter, not the request line it came in.
func TestConnectParamsDoNotPinTheRequest(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 12 MiB of request lines")
	}
	const n = 50
	ep := newFakeEndpoint()
	ep.frameBuf = 1
	ep.connect = func(_ context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
		return channels.Identity{Assigns: map[string]any{"user": info.Params["user"]}}, nil
	}
	// The request targets are above MaxURLLength's default, which
	// refuses them before connect: what is measured is what the HTTP
	// server's header limit alone lets through.
	hs := newHarness(t, parkedMode, WebSocketConfig{MaxURLLength: -1}, ep)
	pad := strings.Repeat("p", 256<<10)
	warm := hs.dial(t, "user=warm", ws.Dialer{})
	<-ep.opened
	warm.send("warm")
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range n {
		hs.dial(t, "user=u"+strconv.Itoa(i)+"&pad="+pad, ws.Dialer{})
		<-ep.opened
	}
	// The fake endpoint keeps every ConnectInfo; an application keeps only
	// what it chose.
	ep.mu.Lock()
	ep.infos = nil
	ep.mu.Unlock()
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d sockets keeping a short parameter of a 256 KiB request line: heap %+d KiB", n, grown>>10)
	if grown > n*32<<10 {
		t.Errorf("heap grew by %d KiB for %d sockets, want at most 32 KiB each: a kept parameter pins its request line", grown>>10, n)
	}
	for _, s := range ep.allSockets()[1:] {
		if u, _ := s.id.Assigns["user"].(string); !strings.HasPrefix(u, "u") {
			t.Fatalf("assigns %v, want the user parameter", s.id.Assigns)
		}
	}
}

// TestURLTooLong: a request target above MaxURLLength is refused with 414
// before the connect callback runs; one within it is upgraded.
func TestURLTooLong(t *testing.T) {
	const max = 1 << 10
	ep := newFakeEndpoint()
	hs := newHarness(t, parkedMode, WebSocketConfig{MaxURLLength: max}, ep)
	path := len("/socket/websocket?")
	ok := "vsn=2.0.0&user=" + strings.Repeat("u", max-path-len("vsn=2.0.0&user="))
	resp, _ := hs.rawRequest(t, http.MethodGet, ok, upgradeHeader())
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("a target of exactly %d bytes: HTTP %d, want 101", max, resp.StatusCode)
	}
	resp, body := hs.rawRequest(t, http.MethodGet, ok+"u", upgradeHeader())
	if resp.StatusCode != http.StatusRequestURITooLong || body != "request target too long" {
		t.Fatalf("a target of %d bytes: HTTP %d %q, want 414 \"request target too long\"", max+1, resp.StatusCode, body)
	}
	if n := ep.connects(); n != 1 {
		t.Errorf("%d connects, want 1: the refused target reached the connect callback", n)
	}
	if n := hs.h.Stats().URLTooLong.Load(); n != 1 {
		t.Errorf("Stats.URLTooLong = %d, want 1", n)
	}
}
