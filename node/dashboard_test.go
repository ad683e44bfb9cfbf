package node

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// dashClient talks HTTP to a listening node, without following redirects
// and without a cookie jar: each test says which cookie it sends.
type dashClient struct {
	t    *testing.T
	base string
}

func (d dashClient) do(method, path string, body string, header ...string) (*http.Response, string) {
	d.t.Helper()
	req, err := http.NewRequest(method, d.base+path, strings.NewReader(body))
	if err != nil {
		d.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func (d dashClient) ticket(header ...string) string {
	d.t.Helper()
	res, body := d.do("GET", "/dashboard/ticket", "", header...)
	var v struct{ Ticket string }
	if res.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &v) != nil || v.Ticket == "" {
		d.t.Fatalf("/dashboard/ticket: %d %s", res.StatusCode, body)
	}
	if res.Header.Get("Cache-Control") != "no-store" {
		d.t.Error("a ticket may be cached")
	}
	return v.Ticket
}

func joinStatus(t *testing.T, c *wsclient.Client, params any) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.Join(ctx, dashboardTopic, params)
	if err != nil {
		t.Fatal(err)
	}
	return m.Status, string(m.Payload)
}

// With an API key, the dashboard takes it from a login form, never from
// the URL, and keeps the session in an HttpOnly, SameSite=Strict cookie;
// the channel needs a ticket that only a session gets.
func TestDashboardLoginAndTicket(t *testing.T) {
	n := startListening(t, Config{NodeID: "a", APIKey: "s3cret"})
	d := dashClient{t: t, base: "http://" + n.Addr().String()}
	form := "application/x-www-form-urlencoded"

	res, body := d.do("GET", "/dashboard", "")
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `action="dashboard/login"`) ||
		!strings.Contains(res.Header.Get("Content-Security-Policy"), "form-action 'self'") {
		t.Fatalf("/dashboard without a session: %d %v %.200q, want 401 with the login form", res.StatusCode, res.Header, body)
	}
	if res, _ := d.do("GET", "/dashboard?key=s3cret", ""); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/dashboard?key=<the key>: %d, want 401: the key does not belong in URLs", res.StatusCode)
	}

	res, _ = d.do("POST", "/dashboard/login", "key=wrong", "Content-Type", form)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Set-Cookie") != "" {
		t.Fatalf("wrong key: %d %v", res.StatusCode, res.Header)
	}
	if loc := res.Header.Get("Location"); !strings.HasSuffix(loc, "/dashboard?login=failed") {
		t.Fatalf("wrong key sent to %q", loc)
	}
	if res, body := d.do("GET", "/dashboard?login=failed", ""); res.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "Wrong key") {
		t.Fatalf("the form after a wrong key: %d %.200q", res.StatusCode, body)
	}
	// Another site's form cannot log the visitor in.
	for _, h := range [][]string{{"Origin", "http://evil.example"}, {"Sec-Fetch-Site", "cross-site"}} {
		if res, _ := d.do("POST", "/dashboard/login", "key=s3cret", "Content-Type", form, h[0], h[1]); res.StatusCode != http.StatusForbidden || res.Header.Get("Set-Cookie") != "" {
			t.Fatalf("login posted with %s: %d, want 403 and no cookie", h, res.StatusCode)
		}
	}

	res, _ = d.do("POST", "/dashboard/login", "key=s3cret", "Content-Type", form, "Origin", d.base, "Sec-Fetch-Site", "same-origin")
	cookies := res.Cookies()
	if res.StatusCode != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("login: %d %v", res.StatusCode, res.Header)
	}
	c := cookies[0]
	if c.Name != dashboardCookie || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/dashboard" ||
		c.MaxAge <= 0 || c.MaxAge > 3600 || strings.Contains(c.Value, "s3cret") {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/dashboard, at most an hour, not the key", c)
	}
	session := []string{"Cookie", c.Name + "=" + c.Value}
	res, body = d.do("GET", "/dashboard", "", session...)
	if res.StatusCode != http.StatusOK || !strings.Contains(body, "dashboard/app.js") ||
		!strings.Contains(res.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("/dashboard with the session: %d %.80q", res.StatusCode, body)
	}
	if res, _ := d.do("GET", "/dashboard", "", "Cookie", c.Name+"=1"+c.Value); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a forged session: %d, want 401", res.StatusCode)
	}
	if res, _ := d.do("GET", "/dashboard/ticket", ""); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a ticket without a session: %d, want 401", res.StatusCode)
	}
	ticket := d.ticket(session...)
	if d.ticket("Authorization", "Bearer s3cret") == "" {
		t.Fatal("no ticket for the bearer key")
	}
	if res, body := d.do("GET", "/dashboard/config.js", ""); res.StatusCode != 200 || !strings.Contains(body, `"topic":"channelsd:cluster"`) {
		t.Fatalf("config.js: %d %q", res.StatusCode, body)
	}

	ws := dial(t, n)
	for _, bad := range []map[string]string{nil, {"key": "s3cret"}, {"ticket": c.Value}, {"ticket": "1" + ticket}} {
		if st, p := joinStatus(t, ws, bad); st != "error" || !strings.Contains(p, "unauthorized") {
			t.Fatalf("join with %v: %s %s, want unauthorized", bad, st, p)
		}
	}
	if st, p := joinStatus(t, ws, map[string]string{"ticket": ticket}); st != "ok" {
		t.Fatalf("join with a ticket: %s %s", st, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Pushes carry the view; the dashboard's own socket is in it.
	for {
		m, err := ws.Await(ctx, wsclient.IsEvent(dashboardTopic, "cluster"))
		if err != nil {
			t.Fatal(err)
		}
		var p clusterPush
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			t.Fatal(err)
		}
		if p.Node == "a" && len(p.Nodes) == 1 && p.Nodes[0].Node == "a" && p.Nodes[0].Sockets == 1 && p.Nodes[0].Channels == 1 {
			break
		}
	}
	if _, err := ws.Push(dashboardTopic, "anything", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Await(ctx, func(m wsclient.Message) bool {
		return m.Event == "phx_reply" && strings.Contains(string(m.Payload), "read-only")
	}); err != nil {
		t.Fatalf("a message to the dashboard channel: %v", err)
	}
}

// Every node of a cluster shares the API key, so a session or ticket from
// one node opens another: behind a load balancer the page, its ticket and
// its WebSocket may each reach a different node.
func TestDashboardSessionsWorkAcrossNodes(t *testing.T) {
	a := newSessionKeys("s3cret")
	b := newSessionKeys("s3cret")
	other := newSessionKeys("another key")
	now := time.Now()
	v := a.issue(purposeSession, now, time.Hour)
	switch {
	case !b.valid(purposeSession, v, now):
		t.Fatal("a session from another node of the cluster is refused")
	case other.valid(purposeSession, v, now):
		t.Fatal("a session survives a change of API key")
	case b.valid(purposeTicket, v, now):
		t.Fatal("a session is worth a ticket")
	case b.valid(purposeSession, v, now.Add(time.Hour)):
		t.Fatal("an expired session is accepted")
	}
}

// Without an API key, an anonymous socket cannot watch the cluster: the
// ticket comes only to local clients. And a token's topics claim bounds
// the dashboard's channel as it bounds every other.
func TestDashboardChannelNeedsTicketAndObeysTopicsClaim(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef"
	v, err := auth.NewVerifier(secret, "")
	if err != nil {
		t.Fatal(err)
	}
	n := startListening(t, Config{NodeID: "a", SocketHandler: &auth.SocketHandler{Verifier: v}})
	d := dashClient{t: t, base: "http://" + n.Addr().String()}
	dialToken := func(topics []string) *wsclient.Client {
		tok, err := v.Sign("ann", topics, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := wsclient.Dial(ctx, wsURL(n), wsclient.Options{Params: map[string]string{"token": tok}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}

	anyTopic := dialToken(nil)
	if st, p := joinStatus(t, anyTopic, map[string]string{}); st != "error" || !strings.Contains(p, "unauthorized") {
		t.Fatalf("join without a ticket: %s %s, want unauthorized", st, p)
	}
	// A remote client gets no ticket (the rebinding case: a page naming
	// another host).
	if res, _ := d.do("GET", "/dashboard/ticket", "", "Host", "evil.example"); res.StatusCode != http.StatusForbidden {
		t.Fatalf("a ticket for Host evil.example: %d, want 403", res.StatusCode)
	}
	if st, p := joinStatus(t, anyTopic, map[string]string{"ticket": d.ticket()}); st != "ok" {
		t.Fatalf("join with a ticket, token without a topics claim: %s %s", st, p)
	}

	privateA := dialToken([]string{"private:a"})
	if st, p := joinStatus(t, privateA, map[string]string{"ticket": d.ticket()}); st != "error" || !strings.Contains(p, "unauthorized") {
		t.Fatalf("a token for private:a joined %s: %s %s", dashboardTopic, st, p)
	}
	granted := dialToken([]string{"private:a", "channelsd:*"})
	if st, p := joinStatus(t, granted, map[string]string{"ticket": d.ticket()}); st != "ok" {
		t.Fatalf("a token whose topics claim names %s: %s %s", dashboardTopic, st, p)
	}
}
