package transport

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Long-poll harness: a LongPollHandler on real HTTP with a fake endpoint.

type lpHarness struct {
	ep  *fakeEndpoint
	h   *LongPollHandler
	srv *httptest.Server
	url string // http://127.0.0.1:port/socket/longpoll
}

func newLPHarness(t *testing.T, cfg LongPollConfig, ep *fakeEndpoint) *lpHarness {
	t.Helper()
	if ep == nil {
		ep = newFakeEndpoint()
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	h, err := NewLongPollHandler(ep, cfg)
	if err != nil {
		t.Fatalf("NewLongPollHandler: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/socket/longpoll", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for _, s := range ep.allSockets() {
			s.awaitClose(t)
			if n := s.closes.Load(); n != 1 {
				t.Errorf("HandleClose called %d times", n)
			}
		}
	})
	return &lpHarness{ep: ep, h: h, srv: srv, url: srv.URL + "/socket/longpoll"}
}

// lpResp is a decoded long-poll answer.
type lpResp struct {
	HTTP     int
	Status   int       `json:"status"`
	Token    *string   `json:"token"`
	Messages *[]string `json:"messages"`
	Raw      string
	Header   http.Header
}

func (r lpResp) token(t testing.TB) string {
	t.Helper()
	if r.Token == nil || *r.Token == "" {
		t.Fatalf("answer %s has no token", r.Raw)
	}
	return *r.Token
}

func (r lpResp) msgs() []string {
	if r.Messages == nil {
		return nil
	}
	return *r.Messages
}

func (hs *lpHarness) do(t testing.TB, req *http.Request) lpResp {
	t.Helper()
	res, err := hs.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	out := lpResp{HTTP: res.StatusCode, Raw: string(body), Header: res.Header}
	if len(body) > 0 && strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("answer %q is not JSON: %v", body, err)
		}
	}
	return out
}

func (hs *lpHarness) req(t testing.TB, method, query string, body string) *http.Request {
	t.Helper()
	u := hs.url
	if query != "" {
		u += "?" + query
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-ndjson")
	}
	return req
}

// pollAll polls through hs from tok until it has as many messages as
// want, at most one poll per message, and fails unless they are want in
// order. each, when set, checks every answer.
func pollAll(t *testing.T, hs *lpHarness, tok string, want []string, each func(lpResp)) {
	t.Helper()
	var got []string
	for polls := 0; len(got) < len(want); polls++ {
		if polls > len(want) {
			t.Fatalf("after %d polls got %d messages", polls, len(got))
		}
		r := hs.get(t, lpTokenQuery(tok))
		if r.Status != 200 || len(r.msgs()) == 0 {
			t.Fatalf("poll %d: %.200s", polls, r.Raw)
		}
		if each != nil {
			each(r)
		}
		got = append(got, r.msgs()...)
		tok = r.token(t)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatal("messages lost or out of order across answers")
	}
}

func (hs *lpHarness) get(t testing.TB, query string) lpResp {
	t.Helper()
	return hs.do(t, hs.req(t, http.MethodGet, query, ""))
}

func (hs *lpHarness) post(t testing.TB, token, body string) lpResp {
	t.Helper()
	return hs.do(t, hs.req(t, http.MethodPost, "vsn=2.0.0&token="+url.QueryEscape(token), body))
}

// open opens a session and returns its token and socket.
func (hs *lpHarness) open(t testing.TB, query string) (string, *fakeSocket) {
	t.Helper()
	r := hs.get(t, query)
	if r.HTTP != 200 || r.Status != 410 || len(r.msgs()) != 0 || r.Messages == nil {
		t.Fatalf("opening GET: HTTP %d %s", r.HTTP, r.Raw)
	}
	select {
	case s := <-hs.ep.opened:
		return r.token(t), s
	case <-time.After(waitLimit):
		t.Fatal("no socket opened")
	}
	return "", nil
}

// awaitWaiting returns once n polls are waiting on the session of sock.
func (hs *lpHarness) awaitWaiting(t testing.TB, sock *fakeSocket) *lpWaiter {
	t.Helper()
	s := sock.conn.(*lpSession)
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		w := s.waiter
		s.mu.Unlock()
		if w != nil {
			return w
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no poll is waiting")
	return nil
}

func lpTokenQuery(tok string) string { return "vsn=2.0.0&token=" + url.QueryEscape(tok) }
