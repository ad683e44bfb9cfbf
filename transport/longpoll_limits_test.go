package transport

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// lpFrame is a text frame of about size bytes, numbered i.
func lpFrame(i, size int) []byte {
	head := `["m` + lpItoa(i) + `","`
	return []byte(head + strings.Repeat("x", max(size-len(head)-2, 0)) + `"]`)
}

// Issue 16 §3: 1,000 pings of 60 KB buffered per session took the heap to
// hundreds of MiB. The session's buffer is bounded in bytes: the message
// that would pass MaxBufferedBytes ends the session as a slow consumer,
// its buffer is freed, and the next request learns it ({"status":410}).
func TestLongPollMaxBufferedBytes(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{}, nil) // the defaults: 4 MiB
	tok, sock := hs.open(t, "vsn=2.0.0")
	s := sock.conn.(*lpSession)
	var err error
	sent := 0
	for i := range 1000 {
		if err = sock.conn.Send(channels.Frame{Data: lpFrame(i, 60<<10)}); err != nil {
			break
		}
		sent += 60 << 10
	}
	if !errors.Is(err, channels.ErrSlowConsumer) {
		t.Fatalf("1,000 frames of 60 KB: Send returned %v, want ErrSlowConsumer", err)
	}
	if sent > DefaultLongPollMaxBufferedBytes {
		t.Fatalf("%d bytes buffered before the session ended", sent)
	}
	sock.awaitClose(t)
	s.mu.Lock()
	freed := s.buf == nil && s.bufBytes == 0
	s.mu.Unlock()
	if !freed {
		t.Fatal("an ended session keeps its buffer")
	}
	if err := sock.conn.Send(channels.Frame{Data: []byte(`["late"]`)}); !errors.Is(err, channels.ErrConnClosed) {
		t.Fatalf("Send after the end: %v", err)
	}
	if r := hs.get(t, lpTokenQuery(tok)); r.Status != 410 {
		t.Fatalf("poll after the overflow: %s", r.Raw)
	}
	if n := hs.h.Stats().OverflowedBytes.Load(); n != 1 {
		t.Fatalf("OverflowedBytes = %d", n)
	}
}

// The replies to the lines of one POST are buffered too: a body of 1,000
// pings whose replies pass the cap ends the session, and the rest of the
// body is not processed.
func TestLongPollPostRepliesCount(t *testing.T) {
	ep := newFakeEndpoint()
	ep.onFrame = func(s *fakeSocket, data []byte, _ bool) {
		_ = s.conn.Send(channels.Frame{Data: lpFrame(0, 60<<10)})
	}
	hs := newLPHarness(t, LongPollConfig{MaxBody: 8 << 20}, ep)
	tok, sock := hs.open(t, "vsn=2.0.0")
	r := hs.post(t, tok, strings.Repeat(`[null,"1","phoenix","heartbeat",{}]`+"\n", 1000))
	if r.Status != 410 {
		t.Fatalf("POST whose replies pass the cap: %s", r.Raw)
	}
	sock.awaitClose(t)
	if n := len(sock.frames); n > DefaultLongPollMaxBufferedBytes/(60<<10)+1 {
		t.Fatalf("%d lines processed after the cap", n)
	}
}

// An answer carries at most MaxAnswerBytes; what does not fit waits for
// the next poll, in order, nothing lost. A message larger than the bound
// goes alone.
func TestLongPollMaxAnswerBytes(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{MaxAnswerBytes: 2000}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	var want []string
	for i := range 10 {
		f := lpFrame(i, 300)
		if i == 7 {
			f = lpFrame(i, 5000)
		}
		want = append(want, string(f))
		if err := sock.conn.Send(channels.Frame{Data: f}); err != nil {
			t.Fatal(err)
		}
	}
	pollAll(t, hs, tok, want, func(r lpResp) {
		if len(r.Raw) > 2000 && len(r.msgs()) > 1 {
			t.Fatalf("answer of %d bytes, %d messages, above MaxAnswerBytes", len(r.Raw), len(r.msgs()))
		}
	})
}

// Issue 16 §3: a client that polls and does not read the answer pinned it
// (and its messages) after the session expired. The answer's write has a
// deadline: past IOTimeout the handler lets go, and the session, whose
// messages went nowhere, ends (the client learns it by {"status":410}).
func TestLongPollAnswerWriteDeadline(t *testing.T) {
	ep := newFakeEndpoint()
	h, err := NewLongPollHandler(ep, LongPollConfig{
		IOTimeout: 200 * time.Millisecond, SessionTimeout: time.Minute,
		MaxBufferedBytes: 64 << 20, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = smallBufListener{srv.Listener}
	srv.Start()
	defer func() {
		srv.Close()
		_ = h.Close()
	}()
	hs := &lpHarness{ep: ep, h: h, srv: srv, url: srv.URL}
	tok, sock := hs.open(t, "vsn=2.0.0")
	for i := range 25 {
		if err := sock.conn.Send(channels.Frame{Data: lpFrame(i, 100<<10)}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/?"+lpTokenQuery(tok), nil)
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	// The answer's head arrives; the client reads no further.
	if _, err := bufio.NewReaderSize(c, 16).Peek(1); err != nil {
		t.Fatal(err)
	}
	sock.awaitClose(t)
	st := h.Stats()
	if st.AnswerFailures.Load() != 1 || st.IOTimeouts.Load() != 1 {
		t.Fatalf("AnswerFailures %d, IOTimeouts %d", st.AnswerFailures.Load(), st.IOTimeouts.Load())
	}
	if h.Sessions() != 0 {
		t.Fatal("the session outlived its undelivered answer")
	}
}

// smallBufListener gives every accepted connection a small send buffer,
// so that an unread answer blocks its writer at once.
type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// A POST body that trickles in is cut off at IOTimeout, none of it
// processed.
func TestLongPollBodyReadDeadline(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{IOTimeout: 200 * time.Millisecond}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	c, err := net.Dial("tcp", hs.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("POST /socket/longpoll?" + lpTokenQuery(tok) + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n[null,"))
	_ = c.SetReadDeadline(time.Now().Add(waitLimit))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a trickled body: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("trickled body: HTTP %d", res.StatusCode)
	}
	if hs.h.Stats().IOTimeouts.Load() != 1 {
		t.Fatal("IOTimeouts not counted")
	}
	select {
	case f := <-sock.frames:
		t.Fatalf("a line of a cut body was processed: %q", f.data)
	default:
	}
}

// Issue 16 §4: long-poll CORS echoed any Origin with credentials. An
// origin that --allowed-origins names gets its Origin back with
// credentials; any other allowed one gets "*" without (Phoenix's answer);
// a refused one gets no CORS header. Preflights likewise.
func TestLongPollCORSCredentials(t *testing.T) {
	type want struct{ origin, creds string }
	check := func(t *testing.T, hs *lpHarness, origin string, w want) {
		t.Helper()
		for _, m := range []string{http.MethodGet, http.MethodOptions} {
			req := hs.req(t, m, "vsn=2.0.0", "")
			req.Header.Set("Origin", origin)
			req.Header.Set("Access-Control-Request-Headers", "content-type")
			r := hs.do(t, req)
			if r.HTTP != 200 || r.Header.Get("Access-Control-Allow-Origin") != w.origin || r.Header.Get("Access-Control-Allow-Credentials") != w.creds {
				t.Errorf("%s from %s: HTTP %d, Allow-Origin %q, Allow-Credentials %q; want %q, %q", m, origin, r.HTTP,
					r.Header.Get("Access-Control-Allow-Origin"), r.Header.Get("Access-Control-Allow-Credentials"), w.origin, w.creds)
			}
		}
	}
	t.Run("any origin", func(t *testing.T) {
		hs := newLPHarness(t, LongPollConfig{}, nil)
		check(t, hs, "https://evil.example", want{"*", ""})
	})
	t.Run("named and star", func(t *testing.T) {
		hs := newLPHarness(t, LongPollConfig{AllowedOrigins: []string{"https://app.example", "*"}}, nil)
		check(t, hs, "https://app.example", want{"https://app.example", "true"})
		check(t, hs, "https://evil.example", want{"*", ""})
	})
	t.Run("named only", func(t *testing.T) {
		hs := newLPHarness(t, LongPollConfig{AllowedOrigins: []string{"https://app.example"}}, nil)
		check(t, hs, "https://app.example:443", want{"https://app.example:443", "true"})
		check(t, hs, "https://evil.example", want{"", ""})
		check(t, hs, "null", want{"", ""})
	})
}

// panicCloseEndpoint's sockets panic in HandleClose.
type panicCloseEndpoint struct{ *fakeEndpoint }

type panicCloseSocket struct{ *fakeSocket }

func (e panicCloseEndpoint) Open(conn channels.Conn, ser channels.Serializer, id channels.Identity) Socket {
	return panicCloseSocket{e.fakeEndpoint.Open(conn, ser, id).(*fakeSocket)}
}

func (s panicCloseSocket) HandleClose() {
	s.fakeSocket.HandleClose()
	panic("injected")
}

// HandleClose runs on a goroutine the session starts, where a panic would
// stop the node: it is recovered and logged.
func TestLongPollHandleClosePanic(t *testing.T) {
	ep := newFakeEndpoint()
	h, err := NewLongPollHandler(panicCloseEndpoint{ep}, LongPollConfig{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if _, st := lpOpenFrom(t, h, "192.0.2.1:1", ""); st != 410 {
		t.Fatal("open failed")
	}
	sock := <-ep.opened
	sock.conn.Close(1000, "test")
	_ = h.Close() // waits for HandleClose
	sock.awaitClose(t)
	if n := h.Stats().Panics.Load(); n != 1 {
		t.Fatalf("Panics = %d", n)
	}
}
