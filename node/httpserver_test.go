package node

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/transport/wsclient"
)

// The defaults bound what a connection that is not a socket may hold:
// idle keep-alive, trickled bodies (per request, see below) and heads.
func TestHTTPServerDefaults(t *testing.T) {
	n := newTestNode(t, Config{})
	s := n.server
	if s.IdleTimeout != 60*time.Second || s.ReadHeaderTimeout <= 0 || s.MaxHeaderBytes <= 0 || s.MaxHeaderBytes > 64<<10 {
		t.Fatalf("server: IdleTimeout %v ReadHeaderTimeout %v MaxHeaderBytes %d; want 60s, set, at most 64 KiB",
			s.IdleTimeout, s.ReadHeaderTimeout, s.MaxHeaderBytes)
	}
	// Not server-wide: they would cut long polls and upgraded sockets.
	if s.ReadTimeout != 0 || s.WriteTimeout != 0 {
		t.Fatalf("server-wide ReadTimeout %v WriteTimeout %v", s.ReadTimeout, s.WriteTimeout)
	}
	if n.cfg.MaxConnections != DefaultMaxSockets+DefaultMaxConnectionsMargin {
		t.Fatalf("MaxConnections %d", n.cfg.MaxConnections)
	}
}

// rawConn opens a TCP connection to n.
func rawConn(t *testing.T, n *Node) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", n.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// awaitClosed reads c until the server closes it, failing after within.
func awaitClosed(t *testing.T, c net.Conn, within time.Duration, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open after %v", what, within)
	}
}

// A request line of about 1 MiB (a WebSocket upgrade with a huge
// connect parameter) is answered 431 at once, not read and served.
func TestHugeRequestLineIs431(t *testing.T) {
	n := startListening(t, Config{})
	c := rawConn(t, n)
	go func() {
		head := "GET /socket/websocket?vsn=2.0.0&user=" + strings.Repeat("a", 1_050_000) + " HTTP/1.1\r\n" +
			"Host: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
		_, _ = io.WriteString(c, head) // fails once the server has closed
	}()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	status, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 431") {
		t.Fatalf("status line %q (%v), want HTTP/1.1 431", status, err)
	}
}

// A keep-alive connection idle between requests is closed after
// HTTPIdleTimeout, and counted.
func TestIdleKeepAliveIsClosed(t *testing.T) {
	n := startListening(t, Config{HTTPIdleTimeout: 200 * time.Millisecond})
	c := rawConn(t, n)
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", res, err)
	}
	awaitClosed(t, c, 5*time.Second, "idle keep-alive connection")
	waitFor(t, "http_idle_timeout counted", func() bool { return n.conns.idleTimeouts.Load() == 1 })
}

// A body that trickles in is cut at HTTPRequestTimeout, and counted; a
// WebSocket, upgraded from a request of that server, outlives it.
func TestSlowBodyIsCutButSocketsAreNot(t *testing.T) {
	n := startListening(t, Config{HTTPRequestTimeout: 300 * time.Millisecond})
	c := rawConn(t, n)
	if _, err := io.WriteString(c, "POST /api/broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"topic\":"); err != nil {
		t.Fatal(err)
	}
	awaitClosed(t, c, 5*time.Second, "connection with a trickling body")
	if got := n.bodyTimeouts.Load(); got != 1 {
		t.Fatalf("http_request_timeout counted %d, want 1", got)
	}

	ws := dial(t, n)
	time.Sleep(700 * time.Millisecond) // idle past the request timeout, on purpose
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := ws.Push("phoenix", "heartbeat", nil); err != nil {
		t.Fatal(err)
	}
	if m, err := ws.Await(ctx, func(m wsclient.Message) bool { return m.Event == "phx_reply" }); err != nil || m.Status != "ok" {
		t.Fatalf("heartbeat after the request timeout: %v %v", m, err)
	}
}

// Over MaxConnections, an idle keep-alive connection makes room for a new
// one; with none idle the new one is closed unanswered, and the node
// serves again once connections go.
func TestMaxConnections(t *testing.T) {
	n := startListening(t, Config{MaxConnections: 2})
	get := func(c net.Conn) int {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			return 0
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0
		}
		_ = res.Body.Close()
		return res.StatusCode
	}
	idle1, idle2 := rawConn(t, n), rawConn(t, n)
	if get(idle1) != 200 || get(idle2) != 200 {
		t.Fatal("/healthz failed below the bound")
	}
	// The server marks a connection idle just after its answer.
	idle := func() int {
		count := 0
		n.conns.idle.Range(func(any, any) bool { count++; return true })
		return count
	}
	waitFor(t, "two idle connections", func() bool { return idle() == 2 })
	if code := get(rawConn(t, n)); code != 200 {
		t.Fatalf("a third connection, two idle: %d, want 200 (an idle one evicted)", code)
	}
	if n.conns.evicted.Load() != 1 {
		t.Fatalf("evicted %d, want 1", n.conns.evicted.Load())
	}
	waitFor(t, "the third connection idle", func() bool { return idle() == 2 })

	// Two connections busy sending their heads: nothing to evict.
	for range 2 {
		c := rawConn(t, n)
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the idle connections evicted", func() bool { return n.conns.plain.Load() == 2 && idle() == 0 })
	if n.conns.refused.Load() != 0 {
		t.Fatal("a connection refused while idle ones could make room")
	}
	over := rawConn(t, n)
	awaitClosed(t, over, 5*time.Second, "connection over the bound")
	if n.conns.refused.Load() == 0 {
		t.Fatal("no refusal counted")
	}
}
