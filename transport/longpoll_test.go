package transport

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// Item 36, and the answer headers of §8.1.
func TestLongPollOpen(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{}, nil)
	req := hs.req(t, http.MethodGet, "vsn=2.0.0&user=7&token=auth", "")
	req.Header.Set("X-Phoenix-AuthToken", "secret-token")
	r := hs.do(t, req)
	if r.HTTP != 200 || r.Status != 410 || r.Messages == nil || len(r.msgs()) != 0 {
		t.Fatalf("got HTTP %d %s", r.HTTP, r.Raw)
	}
	r.token(t)
	if ct := r.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	if ao := r.Header.Get("Access-Control-Allow-Origin"); ao != "*" {
		t.Errorf("Access-Control-Allow-Origin %q", ao)
	}
	info := hs.ep.lastInfo(t)
	if info.Transport != "longpoll" || info.AuthToken != "secret-token" || info.Params["user"] != "7" || info.Params["vsn"] != "2.0.0" || info.Params["token"] != "auth" {
		t.Errorf("connect info %+v", info)
	}
	s := <-hs.ep.opened
	if s.ser.Vsn() != "2.0.0" {
		t.Errorf("serializer %s", s.ser.Vsn())
	}
	if hs.h.Sessions() != 1 {
		t.Errorf("%d sessions", hs.h.Sessions())
	}
}

// Item 36 (refusals), §5.4 origin, §1.2 vsn.
func TestLongPollRefused(t *testing.T) {
	ep := newFakeEndpoint()
	ep.connect = func(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
		switch info.Params["who"] {
		case "bad":
			return channels.Identity{}, context.Canceled
		case "secret":
			return channels.Identity{}, fmt.Errorf("db: password=hunter2: %w", context.DeadlineExceeded)
		case "slow":
			return channels.Identity{}, &channels.ConnectError{Status: 429, Reason: "slow down"}
		}
		return channels.Identity{}, nil
	}
	var log logBuffer
	hs := newLPHarness(t, LongPollConfig{AllowedOrigins: []string{"https://app.example"}, Logger: log.Logger()}, ep)
	for _, c := range []struct {
		query  string
		origin string
		want   int
	}{
		{"vsn=2.0.0&who=bad", "", 403},
		{"vsn=2.0.0&who=secret", "", 403},
		{"vsn=2.0.0&who=slow", "", 429},
		{"vsn=3.0.0", "", 403},
		{"vsn=2.0.0", "https://evil.example", 403},
	} {
		req := hs.req(t, http.MethodGet, c.query, "")
		if c.origin != "" {
			req.Header.Set("Origin", c.origin)
		}
		r := hs.do(t, req)
		if r.HTTP != 200 || r.Status != c.want || r.Token != nil || r.Raw != `{"status":`+lpItoa(c.want)+`}` {
			t.Errorf("%s origin %q: HTTP %d %s, want {\"status\":%d}", c.query, c.origin, r.HTTP, r.Raw, c.want)
		}
	}
	if n := len(hs.ep.allSockets()); n != 0 {
		t.Fatalf("%d sockets opened", n)
	}
	// The errors not made for the client are logged, the secret with them.
	if got := log.String(); strings.Count(got, "transport=longpoll") != 2 || !strings.Contains(got, "hunter2") {
		t.Errorf("log, want both connect errors:\n%s", got)
	}
	// The allowed origin is reflected.
	req := hs.req(t, http.MethodGet, "vsn=2.0.0", "")
	req.Header.Set("Origin", "https://app.example")
	r := hs.do(t, req)
	if r.Status != 410 || r.Header.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("allowed origin: %s %v", r.Raw, r.Header)
	}
}

func lpItoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// Item 37, first half: nothing to deliver → 204 after the window.
func TestLongPollEmptyPoll(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{Window: 150 * time.Millisecond}, nil)
	tok, _ := hs.open(t, "vsn=2.0.0")
	start := time.Now()
	r := hs.get(t, lpTokenQuery(tok))
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("poll answered after %v, before the window", el)
	}
	if r.HTTP != 200 || r.Status != 204 || r.Messages == nil || len(r.msgs()) != 0 {
		t.Fatalf("got %s", r.Raw)
	}
	// The answer carries a (fresh) token that works.
	r2 := hs.get(t, lpTokenQuery(r.token(t)))
	if r2.Status != 204 {
		t.Fatalf("poll with the new token: %s", r2.Raw)
	}
}

// Item 37, second half: a message published while a GET waits returns
// it at once, as a JSON string.
func TestLongPollMessageWhileWaiting(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{Window: waitLimit}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	done := make(chan lpResp, 1)
	go func() { done <- hs.get(t, lpTokenQuery(tok)) }()
	hs.awaitWaiting(t, sock)
	frame := `[null,null,"room:lobby","new_msg",{"body":"hi <b>"}]`
	if err := sock.conn.Send(channels.Frame{Data: []byte(frame)}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.Status != 200 || len(r.msgs()) != 1 || r.msgs()[0] != frame {
			t.Fatalf("got %s", r.Raw)
		}
		r.token(t)
	case <-time.After(waitLimit / 2):
		t.Fatal("the waiting poll did not return at once")
	}
}

// Item 38: two V2 lines and one base64 binary line, processed in order,
// replies on the next GET, never in the POST answer. Binary replies are
// dropped (§2.4) without failing the poll.
func TestLongPollPostOrder(t *testing.T) {
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newLPHarness(t, LongPollConfig{}, ep)
	tok, sock := hs.open(t, "vsn=2.0.0")
	l1 := `["3","3","room:lobby","phx_join",{}]`
	l2 := `["3","4","room:lobby","new_msg",{"body":"hi"}]`
	bin := []byte{0, 1, 1, 6, 6, '3', '7', 'r', 'o', 'o', 'm', ':', '1', 'u', 'p', 'l', 'o', 'a', 'd', 0xde, 0xad, 0xbe, 0xef}
	l3 := "AAEBBgYzN3Jvb206MXVwbG9hZN6tvu8="
	r := hs.post(t, tok, l1+"\n"+l2+"\r\n\n"+l3)
	if r.HTTP != 200 || r.Raw != `{"status":200}` {
		t.Fatalf("POST: HTTP %d %s", r.HTTP, r.Raw)
	}
	got := []frameRec{sock.nextFrame(t), sock.nextFrame(t), sock.nextFrame(t)}
	if string(got[0].data) != l1 || got[0].binary || string(got[1].data) != l2 || got[1].binary {
		t.Fatalf("text frames %q %q", got[0].data, got[1].data)
	}
	if !got[2].binary || string(got[2].data) != string(bin) {
		t.Fatalf("binary frame %x binary=%v", got[2].data, got[2].binary)
	}
	p := hs.get(t, lpTokenQuery(tok))
	if p.Status != 200 || len(p.msgs()) != 2 || p.msgs()[0] != l1 || p.msgs()[1] != l2 {
		t.Fatalf("poll: %s", p.Raw)
	}
	if n := hs.h.Stats().DroppedBinary.Load(); n != 1 {
		t.Fatalf("DroppedBinary = %d", n)
	}
}

// V1: vsn 1.0.0 (and no vsn) selects V1; a line starting with "{" is a
// V1 frame; a body that is not ndjson is one frame (older clients).
func TestLongPollV1(t *testing.T) {
	ep := newFakeEndpoint()
	ep.echo = true
	hs := newLPHarness(t, LongPollConfig{}, ep)
	for _, q := range []string{"vsn=1.0.0", ""} {
		tok, sock := hs.open(t, q)
		if sock.ser.Vsn() != "1.0.0" {
			t.Fatalf("%q: serializer %s", q, sock.ser.Vsn())
		}
		f := `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"5"}`
		if r := hs.post(t, tok, f); r.Raw != `{"status":200}` {
			t.Fatalf("POST: %s", r.Raw)
		}
		req := hs.req(t, http.MethodPost, lpTokenQuery(tok), f+"\n"+f)
		req.Header.Set("Content-Type", "application/json")
		if r := hs.do(t, req); r.Raw != `{"status":200}` {
			t.Fatalf("POST json: %s", r.Raw)
		}
		if got := sock.nextFrame(t); string(got.data) != f {
			t.Fatalf("frame %q", got.data)
		}
		if got := sock.nextFrame(t); string(got.data) != f+"\n"+f {
			t.Fatalf("non-ndjson body: frame %q", got.data)
		}
		p := hs.get(t, lpTokenQuery(tok))
		if p.Status != 200 || len(p.msgs()) != 2 {
			t.Fatalf("poll: %s", p.Raw)
		}
	}
}

// Item 39, plus tokens that are tampered with, signed by another secret,
// for another node, or too old.
func TestLongPollBadTokens(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{NodeID: "n1", TokenMaxAge: time.Hour}, nil)
	good, _ := hs.open(t, "vsn=2.0.0")
	var sess [lpSessionIDLen]byte
	copy(sess[:], hs.h.lookupForTest(t, good).id[:])
	bad := []string{
		"garbage",
		good[:len(good)-2] + "AA",
		signLongPollToken([]byte("other secret"), lpToken{NodeID: "n1", Session: sess, Issued: time.Now()}),
		signLongPollToken(hs.h.secret, lpToken{NodeID: "n2", Session: sess, Issued: time.Now()}),
		signLongPollToken(hs.h.secret, lpToken{NodeID: "n1", Session: sess, Issued: time.Now().Add(-2 * time.Hour)}),
		signLongPollToken(hs.h.secret, lpToken{NodeID: "n1", Issued: time.Now()}), // no such session
	}
	for i, b := range bad {
		if r := hs.post(t, b, `[null,"1","phoenix","heartbeat",{}]`); r.HTTP != 200 || r.Raw != `{"status":410}` {
			t.Errorf("POST bad token %d: HTTP %d %s", i, r.HTTP, r.Raw)
		}
		r := hs.get(t, lpTokenQuery(b))
		if r.Status != 410 || r.token(t) == good || r.token(t) == b {
			t.Errorf("GET bad token %d: %s", i, r.Raw)
		}
		<-hs.ep.opened
	}
	// The good token still works.
	if r := hs.post(t, good, `[null,"1","phoenix","heartbeat",{}]`); r.Raw != `{"status":200}` {
		t.Fatalf("good token: %s", r.Raw)
	}
}

// lookupForTest finds the session a token names.
func (h *LongPollHandler) lookupForTest(t testing.TB, tok string) *lpSession {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/socket/longpoll?token="+url.QueryEscape(tok), nil)
	s := h.lookup(req)
	if s == nil {
		t.Fatalf("token %q names no session", tok)
	}
	return s
}

// Item 42: the last token query parameter is the session token; the
// header takes precedence over the query. The default Window and
// SessionTimeout: the polls answer at once (a message is buffered), and
// the session must outlive the test however slowly it runs (a short
// window made its SessionTimeout 75 ms, and it expired on a loaded
// machine).
func TestLongPollTokenLocation(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	if err := sock.conn.Send(channels.Frame{Data: []byte(`["m"]`)}); err != nil {
		t.Fatal(err)
	}
	if r := hs.get(t, "token=user-auth&vsn=2.0.0&token="+url.QueryEscape(tok)); r.Status != 200 || len(r.msgs()) != 1 {
		t.Fatalf("last token param: %s", r.Raw)
	}
	if r := hs.get(t, "token="+url.QueryEscape(tok)+"&vsn=2.0.0&token=user-auth"); r.Status != 410 {
		t.Fatalf("first token param was used: %s", r.Raw)
	}
	<-hs.ep.opened
	req := hs.req(t, http.MethodPost, "vsn=2.0.0&token=garbage", `[null,"1","phoenix","heartbeat",{}]`)
	req.Header.Set("X-Phoenix-LongPoll-Token", tok)
	if r := hs.do(t, req); r.Raw != `{"status":200}` {
		t.Fatalf("header token: %s", r.Raw)
	}
	req = hs.req(t, http.MethodPost, lpTokenQuery(tok), `[null,"1","phoenix","heartbeat",{}]`)
	req.Header.Set("X-Phoenix-LongPoll-Token", "garbage")
	if r := hs.do(t, req); r.Raw != `{"status":410}` {
		t.Fatalf("the query token won over the header: %s", r.Raw)
	}
}

// Item 41: no GET for SessionTimeout ends the session; POSTs do not keep
// it alive; later requests get 410.
func TestLongPollSessionTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	hs := newLPHarness(t, LongPollConfig{Window: 50 * time.Millisecond, SessionTimeout: timeout}, nil)
	// Before the opening GET, from which the session's time counts: the
	// session cannot end sooner than timeout after this, however slowly
	// the answer comes back.
	start := time.Now()
	tok, sock := hs.open(t, "vsn=2.0.0")
	if r := hs.post(t, tok, `[null,"1","phoenix","heartbeat",{}]`); r.Raw != `{"status":200}` {
		t.Fatalf("POST: %s", r.Raw)
	}
	sock.awaitClose(t)
	if el := time.Since(start); el < timeout {
		t.Fatalf("session ended after %v", el)
	}
	if hs.h.Stats().Expired.Load() != 1 || hs.h.Sessions() != 0 {
		t.Fatalf("expired %d, sessions %d", hs.h.Stats().Expired.Load(), hs.h.Sessions())
	}
	if r := hs.post(t, tok, `[null,"2","phoenix","heartbeat",{}]`); r.Raw != `{"status":410}` {
		t.Fatalf("POST after expiry: %s", r.Raw)
	}
	r := hs.get(t, lpTokenQuery(tok))
	if r.Status != 410 || r.token(t) == tok {
		t.Fatalf("GET after expiry: %s", r.Raw)
	}
	<-hs.ep.opened
}

// Item 41: polling keeps a session alive past SessionTimeout. The polls
// must begin less than SessionTimeout apart, each after a Window's wait:
// a second leaves a loaded machine most of it to stall in.
func TestLongPollPollsKeepSession(t *testing.T) {
	const timeout = time.Second
	hs := newLPHarness(t, LongPollConfig{Window: 50 * time.Millisecond, SessionTimeout: timeout}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	for deadline := time.Now().Add(timeout * 3 / 2); time.Now().Before(deadline); {
		p := hs.get(t, lpTokenQuery(tok))
		if p.Status != 204 {
			t.Fatalf("poll on a live session: %s", p.Raw)
		}
		tok = p.token(t)
	}
	select {
	case <-sock.closed:
		t.Fatal("a polled session expired")
	default:
	}
}

// Conn.Close (disconnect by id, server close) ends the session: the
// waiting poll answers 410, HandleClose runs once, later requests 410.
func TestLongPollServerClose(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{Window: waitLimit}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	done := make(chan lpResp, 1)
	go func() { done <- hs.get(t, lpTokenQuery(tok)) }()
	hs.awaitWaiting(t, sock)
	sock.conn.Close(channels.CloseGoingAway, "disconnect")
	sock.conn.Close(channels.CloseGoingAway, "again")
	if r := <-done; r.Raw != `{"status":410}` {
		t.Fatalf("waiting poll: %s", r.Raw)
	}
	sock.awaitClose(t)
	if err := sock.conn.Send(channels.Frame{Data: []byte("[]")}); err == nil {
		t.Fatal("Send after Close succeeded")
	}
	if r := hs.post(t, tok, `[null,"1","phoenix","heartbeat",{}]`); r.Raw != `{"status":410}` {
		t.Fatalf("POST: %s", r.Raw)
	}
}

// Close of the handler ends every session and wakes their polls.
func TestLongPollHandlerClose(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{Window: waitLimit}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	_, sock2 := hs.open(t, "vsn=2.0.0")
	done := make(chan lpResp, 1)
	go func() { done <- hs.get(t, lpTokenQuery(tok)) }()
	hs.awaitWaiting(t, sock)
	if err := hs.h.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.Raw != `{"status":410}` {
		t.Fatalf("waiting poll: %s", r.Raw)
	}
	for _, s := range []*fakeSocket{sock, sock2} {
		select {
		case <-s.closed:
		default:
			t.Fatal("Close returned before HandleClose")
		}
	}
	if r := hs.get(t, "vsn=2.0.0"); r.HTTP != http.StatusServiceUnavailable {
		t.Fatalf("GET after Close: HTTP %d", r.HTTP)
	}
}

// Close while sessions end by themselves (Conn.Close here; their timers
// take the same path): every HandleClose has returned when Close does,
// and Close's wait does not race the count of a session that ends
// meanwhile, which the race detector once reported when a session
// expired during a test's cleanup.
func TestLongPollCloseWhileSessionsEnd(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{}, nil)
	socks := make([]*fakeSocket, 64)
	for i := range socks {
		_, socks[i] = hs.open(t, "vsn=2.0.0")
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			s.conn.Close(channels.CloseGoingAway, "bye")
		}()
	}
	close(start)
	if err := hs.h.Close(); err != nil {
		t.Fatal(err)
	}
	for i, s := range socks {
		select {
		case <-s.closed:
		default:
			t.Errorf("session %d: HandleClose had not run when Close returned", i)
		}
	}
	wg.Wait()
}

// MaxBuffered: a message beyond it ends the session as a slow consumer
// (the client learns it by {"status":410}), rather than dropping the
// oldest without the client knowing.
func TestLongPollMaxBuffered(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{MaxBuffered: 3}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	for i := range 3 {
		if err := sock.conn.Send(channels.Frame{Data: []byte(`["m` + lpItoa(i) + `"]`)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sock.conn.Send(channels.Frame{Data: []byte(`["m3"]`)}); !errors.Is(err, channels.ErrSlowConsumer) {
		t.Fatalf("Send beyond MaxBuffered: %v, want ErrSlowConsumer", err)
	}
	sock.awaitClose(t)
	if r := hs.get(t, lpTokenQuery(tok)); r.Status != 410 {
		t.Fatalf("poll after the overflow: %s", r.Raw)
	}
	if n := hs.h.Stats().Overflowed.Load(); n != 1 {
		t.Fatalf("Overflowed = %d", n)
	}
}

// One waiting poll per session: a second GET ends the first (204 at
// once); messages go to the latest.
func TestLongPollConcurrentGETs(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{Window: waitLimit}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	first := make(chan lpResp, 1)
	go func() { first <- hs.get(t, lpTokenQuery(tok)) }()
	w1 := hs.awaitWaiting(t, sock)
	second := make(chan lpResp, 1)
	go func() { second <- hs.get(t, lpTokenQuery(tok)) }()
	select {
	case r := <-first:
		if r.Status != 204 || len(r.msgs()) != 0 {
			t.Fatalf("replaced poll: %s", r.Raw)
		}
	case <-time.After(waitLimit / 2):
		t.Fatal("the replaced poll did not answer")
	}
	for w := hs.awaitWaiting(t, sock); w == w1; w = hs.awaitWaiting(t, sock) {
		time.Sleep(time.Millisecond)
	}
	if err := sock.conn.Send(channels.Frame{Data: []byte(`["x"]`)}); err != nil {
		t.Fatal(err)
	}
	if r := <-second; r.Status != 200 || len(r.msgs()) != 1 {
		t.Fatalf("latest poll: %s", r.Raw)
	}
	// Many at once: every one answers, none hangs.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := hs.do(t, hs.req(t, http.MethodGet, lpTokenQuery(tok), ""))
			if r.Status != 204 && r.Status != 200 {
				t.Errorf("poll: %s", r.Raw)
			}
		}()
	}
	// The last to wait is released by a message.
	for {
		hs.awaitWaiting(t, sock)
		if hs.h.Stats().Polls.Load() >= 10 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	_ = sock.conn.Send(channels.Frame{Data: []byte(`["y"]`)})
	wg.Wait()
}

// Limits and methods: MaxBody (413), MaxSessions (503), OPTIONS, others.
func TestLongPollLimitsAndMethods(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{MaxBody: 64, MaxSessions: 1, AllowedOrigins: []string{"https://app.example"}}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	r := hs.post(t, tok, strings.Repeat(`[null,"1","phoenix","heartbeat",{}]`+"\n", 3))
	if r.HTTP != http.StatusRequestEntityTooLarge || r.Raw != `{"status":413}` {
		t.Fatalf("big body: HTTP %d %s", r.HTTP, r.Raw)
	}
	select {
	case f := <-sock.frames:
		t.Fatalf("a line of a refused body was processed: %q", f.data)
	default:
	}
	if r := hs.post(t, tok, `[null,"1","phoenix","heartbeat",{}]`); r.Raw != `{"status":200}` {
		t.Fatalf("session lost after a big body: %s", r.Raw)
	}
	if r := hs.get(t, "vsn=2.0.0"); r.HTTP != http.StatusServiceUnavailable || r.Raw != "" {
		t.Fatalf("session above MaxSessions: HTTP %d %q", r.HTTP, r.Raw)
	}
	// A garbage line is skipped, the others processed.
	if r := hs.post(t, tok, "!!!\n"+`[null,"2","phoenix","heartbeat",{}]`); r.Raw != `{"status":200}` {
		t.Fatalf("garbage line: %s", r.Raw)
	}
	sock.nextFrame(t)
	if f := sock.nextFrame(t); string(f.data) != `[null,"2","phoenix","heartbeat",{}]` {
		t.Fatalf("frame %q", f.data)
	}

	req := hs.req(t, http.MethodOptions, "", "")
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Headers", "x-phoenix-longpoll-token, content-type")
	res := hs.do(t, req)
	if res.HTTP != 200 || res.Raw != "" ||
		res.Header.Get("Access-Control-Allow-Origin") != "https://app.example" ||
		res.Header.Get("Access-Control-Allow-Headers") != "x-phoenix-longpoll-token, content-type" ||
		res.Header.Get("Access-Control-Allow-Methods") != "get, post, options" ||
		res.Header.Get("Access-Control-Max-Age") != "3600" {
		t.Fatalf("preflight: HTTP %d %v", res.HTTP, res.Header)
	}
	for _, m := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch} {
		if r := hs.do(t, hs.req(t, m, "", "")); r.HTTP != 400 || r.Raw != "" {
			t.Fatalf("%s: HTTP %d %q", m, r.HTTP, r.Raw)
		}
	}
}

// A connect refused by the endpoint during Open (shutting down) ends the
// session at once; HandleClose still runs once.
func TestLongPollCloseDuringOpen(t *testing.T) {
	ep := newFakeEndpoint()
	ep.onOpen = func(s *fakeSocket) { s.conn.Close(channels.CloseGoingAway, "shutting down") }
	hs := newLPHarness(t, LongPollConfig{}, ep)
	r := hs.get(t, "vsn=2.0.0")
	if r.Raw != `{"status":410}` {
		t.Fatalf("got %s", r.Raw)
	}
	s := <-hs.ep.opened
	s.awaitClose(t)
	if hs.h.Sessions() != 0 {
		t.Fatal("session left in the table")
	}
}

// A waiting poll keeps its session alive even when the window is longer
// than SessionTimeout.
func TestLongPollNoExpiryWhileWaiting(t *testing.T) {
	hs := newLPHarness(t, LongPollConfig{Window: 400 * time.Millisecond, SessionTimeout: 100 * time.Millisecond}, nil)
	tok, sock := hs.open(t, "vsn=2.0.0")
	// The poll outlives SessionTimeout four times over; a session ended
	// under a waiting poll makes it answer {"status":410}, so 204 says the
	// session was live when the window ran out. (Once the poll has
	// answered, the session may expire at once: its last GET began
	// longer ago than SessionTimeout.)
	for late := 0; ; late++ {
		r := hs.get(t, lpTokenQuery(tok))
		if r.Status == 410 && hs.h.Stats().Polls.Load() == 0 {
			// No poll ever waited (Polls counts those that found their
			// session live): the GET came more than SessionTimeout
			// after the session opened, as on a loaded machine, and
			// opened a new one. Again with that one.
			if late == 5 {
				t.Fatalf("%d polls in a row came after their session expired", late+1)
			}
			tok, sock = r.token(t), <-hs.ep.opened
			continue
		}
		if r.Status != 204 {
			t.Fatalf("poll: %s (the session ended while a poll waited?)", r.Raw)
		}
		// Without polls it does expire (as did those a late GET found).
		sock.awaitClose(t)
		if n := hs.h.Stats().Expired.Load(); n != uint64(late)+1 {
			t.Fatalf("Expired = %d, want %d", n, late+1)
		}
		return
	}
}

// A frame that makes the server close the session stops the POST: later
// lines are not processed and the answer is {"status":410}.
func TestLongPollCloseDuringPost(t *testing.T) {
	ep := newFakeEndpoint()
	ep.onFrame = func(s *fakeSocket, data []byte, binary bool) {
		if string(data) == `["close"]` {
			s.conn.Close(channels.ClosePolicy, "bye")
		}
	}
	hs := newLPHarness(t, LongPollConfig{}, ep)
	tok, sock := hs.open(t, "vsn=2.0.0")
	r := hs.post(t, tok, `["a"]`+"\n"+`["close"]`+"\n"+`["b"]`)
	if r.Raw != `{"status":410}` {
		t.Fatalf("POST: %s", r.Raw)
	}
	if f := sock.nextFrame(t); string(f.data) != `["a"]` {
		t.Fatalf("frame %q", f.data)
	}
	if f := sock.nextFrame(t); string(f.data) != `["close"]` {
		t.Fatalf("frame %q", f.data)
	}
	sock.awaitClose(t)
	select {
	case f := <-sock.frames:
		t.Fatalf("a line after the close was processed: %q", f.data)
	default:
	}
}

func TestLongPollConfigErrors(t *testing.T) {
	if _, err := NewLongPollHandler(nil, LongPollConfig{}); err == nil {
		t.Error("nil endpoint accepted")
	}
	if _, err := NewLongPollHandler(newFakeEndpoint(), LongPollConfig{NodeID: strings.Repeat("n", 256)}); err == nil {
		t.Error("long NodeID accepted")
	}
	if _, err := NewLongPollHandler(newFakeEndpoint(), LongPollConfig{AllowedOrigins: []string{"not an origin"}}); err == nil {
		t.Error("bad origin accepted")
	}
	h, err := NewLongPollHandler(newFakeEndpoint(), LongPollConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if h.cfg.Window != 10*time.Second || h.cfg.SessionTimeout != 15*time.Second || h.cfg.MaxBuffered != 1000 || h.cfg.MaxBody != 1<<20 || h.cfg.MaxSessions != 10000 || len(h.secret) != 32 {
		t.Errorf("defaults %+v", h.cfg)
	}
	_ = h.Close()
}

// Regression (FuzzLongPollBody): an unpadded base64 line whose length is
// not a multiple of 4 decodes to more bytes than a padded one of the same
// length; the decoding buffer was sized for the padded one and the POST
// panicked. Now it is a binary frame like any other.
func TestLongPollUnpaddedBase64(t *testing.T) {
	ep := newFakeEndpoint()
	hs := newLPHarness(t, LongPollConfig{}, ep)
	tok, sock := hs.open(t, "vsn=2.0.0")
	bin := []byte{0, 1, 2, 3, 1} // 7 characters unpadded, StdEncoding.DecodedLen(7) = 3
	r := hs.post(t, tok, base64.RawStdEncoding.EncodeToString(bin)+"\r\n")
	if r.HTTP != 200 || r.Raw != `{"status":200}` {
		t.Fatalf("POST: HTTP %d %s", r.HTTP, r.Raw)
	}
	if got := sock.nextFrame(t); !got.binary || string(got.data) != string(bin) {
		t.Fatalf("binary frame %x binary=%v", got.data, got.binary)
	}
}
