package transport

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// heldPost is a POST in flight whose body the test sends when it likes.
type heldPost struct {
	pw  *io.PipeWriter
	res chan lpResp // the answer; HTTP 0 when the request failed
}

// startPost sends a POST to tok with a body of size bytes (Content-Length
// when known is set, else chunked) and returns at once; the body comes
// through hp.pw.
func (hs *lpHarness) startPost(t *testing.T, tok string, size int64, known bool) *heldPost {
	t.Helper()
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hs.url+"?vsn=2.0.0&token="+url.QueryEscape(tok), pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.ContentLength = -1
	if known {
		req.ContentLength = size
	}
	hp := &heldPost{pw: pw, res: make(chan lpResp, 1)}
	go func() {
		res, err := hs.srv.Client().Do(req)
		if err != nil {
			hp.res <- lpResp{}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		hp.res <- lpResp{HTTP: res.StatusCode, Raw: string(b), Header: res.Header}
	}()
	return hp
}

func (hp *heldPost) answer(t *testing.T) lpResp {
	t.Helper()
	select {
	case r := <-hp.res:
		return r
	case <-time.After(waitLimit):
		t.Fatal("POST not answered")
	}
	return lpResp{}
}

// awaitBodyBuffers returns once the handler holds n bytes of bodies.
func (hs *lpHarness) awaitBodyBuffers(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for hs.h.Stats().BodyBuffers.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("BodyBuffers = %d, want %d", hs.h.Stats().BodyBuffers.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// frameBody is the line frame padded with empty lines (skipped) to size
// bytes.
func frameBody(frame string, size int) string {
	return frame + "\n" + strings.Repeat("\n", size-len(frame)-1)
}

// POST bodies in flight are bounded node-wide: with 900 of 1,000 bytes
// held by two bodies sent slowly, a third POST is refused at once with
// HTTP 503 and {"status":503} without a byte of its body read (none is
// ever sent), the two finish and are handled, and the budget is back at
// zero.
func TestLongPollBodyBuffers(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{MaxBodyBuffers: 1000}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")

	a := hs.startPost(t, tok, 600, true)
	bodyA := frameBody(`["a"]`, 600)
	if _, err := io.WriteString(a.pw, bodyA[:10]); err != nil {
		t.Fatal(err)
	}
	hs.awaitBodyBuffers(t, 600)
	b := hs.startPost(t, tok, 300, true)
	bodyB := frameBody(`["b"]`, 300)
	if _, err := io.WriteString(b.pw, bodyB[:10]); err != nil {
		t.Fatal(err)
	}
	hs.awaitBodyBuffers(t, 900)

	c := hs.startPost(t, tok, 200, true) // its body never comes
	r := c.answer(t)
	if r.HTTP != http.StatusServiceUnavailable || r.Raw != `{"status":503}` || r.Header.Get("Retry-After") == "" ||
		!strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("POST over the budget: HTTP %d %q %v", r.HTTP, r.Raw, r.Header)
	}
	if n := hs.h.Stats().BodyBuffersFull.Load(); n != 1 {
		t.Fatalf("BodyBuffersFull = %d", n)
	}
	if n := hs.h.Stats().BodyBuffers.Load(); n != 900 {
		t.Fatalf("the refused POST holds budget: %d", n)
	}

	for _, p := range []struct {
		hp   *heldPost
		rest string
	}{{a, bodyA[10:]}, {b, bodyB[10:]}} {
		if _, err := io.WriteString(p.hp.pw, p.rest); err != nil {
			t.Fatal(err)
		}
		if r := p.hp.answer(t); r.HTTP != 200 || r.Raw != `{"status":200}` {
			t.Fatalf("POST within the budget: HTTP %d %q", r.HTTP, r.Raw)
		}
	}
	got := map[string]bool{}
	for range 2 {
		got[string(sock.nextFrame(t).data)] = true
	}
	if !got[`["a"]`] || !got[`["b"]`] {
		t.Fatalf("frames %v", got)
	}
	hs.awaitBodyBuffers(t, 0)

	// The session lost nothing: a POST now goes through.
	if r := hs.post(t, tok, `["c"]`); r.Status != 200 {
		t.Fatalf("POST after: %s", r.Raw)
	}
	if f := sock.nextFrame(t); string(f.data) != `["c"]` {
		t.Fatalf("frame %q", f.data)
	}
	hs.awaitBodyBuffers(t, 0)
}

// A body without Content-Length is charged as it is read: one that
// outgrows the room left is refused (503) mid-body, nothing of it
// handled; alone, it may pass the budget up to MaxBody.
func TestLongPollBodyBuffersChunked(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{MaxBodyBuffers: 6000, MaxBody: 16 << 10}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")

	// Alone: 10,000 bytes in a budget of 6,000.
	big := frameBody(`["big"]`, 10000)
	p := hs.startPost(t, tok, 0, false)
	go func() { _, _ = io.WriteString(p.pw, big); p.pw.Close() }()
	if r := p.answer(t); r.Raw != `{"status":200}` {
		t.Fatalf("chunked POST alone: HTTP %d %q", r.HTTP, r.Raw)
	}
	if f := sock.nextFrame(t); string(f.data) != `["big"]` {
		t.Fatalf("frame %q", f.data)
	}
	hs.awaitBodyBuffers(t, 0)

	// Behind a held body of 5,000 bytes.
	held := hs.startPost(t, tok, 5000, true)
	hs.awaitBodyBuffers(t, 5000)
	// The body's first buffer (4 KiB) does not fit the 1,000 bytes left:
	// refused before a byte of it is read. The client sends none before
	// the answer: bytes unread when the server closes the connection
	// would make it reset, and the client could lose the answer.
	p = hs.startPost(t, tok, 0, false)
	if r := p.answer(t); r.HTTP != 503 || r.Raw != `{"status":503}` {
		t.Fatalf("chunked POST over the budget: HTTP %d %q", r.HTTP, r.Raw)
	}
	p.pw.Close()
	hs.awaitBodyBuffers(t, 5000)
	if _, err := io.WriteString(held.pw, frameBody(`["held"]`, 5000)); err != nil {
		t.Fatal(err)
	}
	if r := held.answer(t); r.Raw != `{"status":200}` {
		t.Fatalf("held POST: HTTP %d %q", r.HTTP, r.Raw)
	}
	if f := sock.nextFrame(t); string(f.data) != `["held"]` {
		t.Fatalf("frame %q: the refused body was handled", f.data)
	}
	hs.awaitBodyBuffers(t, 0)
}

// Every way a POST ends gives its bytes back: the client gone mid-body,
// a body above MaxBody (declared, or found while reading), the session
// ended by a frame of the body, a dead session.
func TestLongPollBodyBuffersReleased(t *testing.T) {
	ep := newFakeEndpoint()
	ep.onFrame = func(s *fakeSocket, data []byte, _ bool) {
		if string(data) == `["close"]` {
			s.conn.Close(channels.ClosePolicy, "bye")
		}
	}
	hs := newLPHarness(t, LongPollConfig{MaxBodyBuffers: 100 << 10, MaxBody: 4096}, ep)
	tok, sock := hs.open(t, "vsn=2.0.0")

	gone := hs.startPost(t, tok, 3000, true)
	if _, err := io.WriteString(gone.pw, "[\"x\"]\n"); err != nil {
		t.Fatal(err)
	}
	hs.awaitBodyBuffers(t, 3000)
	gone.pw.CloseWithError(io.ErrUnexpectedEOF)
	if r := gone.answer(t); r.HTTP == 200 {
		t.Fatalf("POST cut short: %q", r.Raw)
	}
	hs.awaitBodyBuffers(t, 0)

	if r := hs.post(t, tok, strings.Repeat("\n", 5000)); r.HTTP != 413 {
		t.Fatalf("POST above MaxBody: HTTP %d %q", r.HTTP, r.Raw)
	}
	hs.awaitBodyBuffers(t, 0)
	p := hs.startPost(t, tok, 0, false)
	go func() { _, _ = io.WriteString(p.pw, strings.Repeat("\n", 5000)); p.pw.Close() }()
	if r := p.answer(t); r.HTTP != 413 {
		t.Fatalf("chunked POST above MaxBody: HTTP %d %q", r.HTTP, r.Raw)
	}
	hs.awaitBodyBuffers(t, 0)

	if r := hs.post(t, tok, `["close"]`+"\n"+`["after"]`); r.Raw != `{"status":410}` {
		t.Fatalf("POST that ends the session: %q", r.Raw)
	}
	sock.awaitClose(t)
	hs.awaitBodyBuffers(t, 0)
	if r := hs.post(t, tok, `["late"]`); r.Raw != `{"status":410}` {
		t.Fatalf("POST to the ended session: %q", r.Raw)
	}
	hs.awaitBodyBuffers(t, 0)
}
