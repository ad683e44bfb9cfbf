package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/cmd/channelsd/app"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport/wsclient"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startNode starts an in-process node serving the default application.
func startNode(t *testing.T, cfg node.Config) *node.Node {
	t.Helper()
	var n *node.Node
	opts := app.Options{Endpoint: func() *channels.Endpoint { return n.Endpoint() }}
	cfg.Addr = "127.0.0.1:0"
	cfg.Router = app.Router(opts)
	cfg.SocketHandler = app.SocketHandler(opts)
	cfg.Logger = slog.New(slog.DiscardHandler)
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return n
}

// `channelsd drain` against a node with sockets: it starts the drain,
// waits until the node has closed them over its window, and succeeds.
func TestDrainCommand(t *testing.T) {
	n := startNode(t, node.Config{APIKey: "sesame", DrainWindow: 600 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const count = 4
	var clients []*wsclient.Client
	for range count {
		c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if reply, err := c.Join(ctx, "room:drain", map[string]any{"user": "u"}); err != nil || reply.Status != "ok" {
			t.Fatalf("join: %v %v", reply, err)
		}
		clients = append(clients, c)
	}

	// The command reads the node's variables, as in the preStop hook.
	t.Setenv("CHANNELS_ADDR", n.Addr().String())
	t.Setenv("CHANNELS_API_KEY", "sesame")
	t.Setenv("CHANNELS_DRAIN_WINDOW", "1s")
	var out bytes.Buffer
	start := time.Now()
	if err := drainCommand(ctx, nil, &out); err != nil {
		t.Fatalf("drain: %v\n%s", err, out.String())
	}
	t.Logf("took %s:\n%s", time.Since(start), out.String())
	if !strings.Contains(out.String(), "drained in") {
		t.Errorf("output %q", out.String())
	}
	if left := n.Endpoint().SocketCount(); left != 0 {
		t.Errorf("%d sockets left after `channelsd drain`", left)
	}
	if st := n.DrainStatus(); !st.Draining || st.SocketsLeft != 0 {
		t.Errorf("status after: %+v", st)
	}
	for _, c := range clients {
		if st, err := c.AwaitClose(ctx); err != nil || st.Code != channels.CloseServiceRestart {
			t.Errorf("client closed with %v %v, want 1012", st, err)
		}
	}
	// Again, on a drained node: at once.
	out.Reset()
	if err := drainCommand(ctx, nil, &out); err != nil || !strings.Contains(out.String(), "drained in") {
		t.Errorf("second drain: %v %q", err, out.String())
	}
}

// Without an API key the node serves its API to loopback clients only,
// which the preStop hook is: the drain works with no key at all, whether
// the node listens on every address or on loopback.
func TestDrainCommandWithoutKey(t *testing.T) {
	n := startNode(t, node.Config{DrainWindow: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, port, _ := net.SplitHostPort(n.Addr().String())
	for _, addr := range []string{":" + port, "localhost:" + port} {
		t.Setenv("CHANNELS_ADDR", addr)
		t.Setenv("CHANNELS_API_KEY", "")
		var out bytes.Buffer
		if err := drainCommand(ctx, nil, &out); err != nil || !strings.Contains(out.String(), "drained in") {
			t.Fatalf("drain of %s without a key: %v %q", addr, err, out.String())
		}
	}
}

func TestDrainCommandFailures(t *testing.T) {
	n := startNode(t, node.Config{APIKey: "sesame"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o := drainOptions{addr: n.Addr().String(), apiKey: "wrong", window: time.Second, margin: time.Second, poll: 10 * time.Millisecond}
	err := drainNode(ctx, o, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong key: %v, want a 401 error", err)
	}
	if n.DrainStatus().Draining {
		t.Error("a refused request started the drain")
	}

	// Nothing listening there any more.
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	o.addr = addr
	if err := drainNode(ctx, o, io.Discard); err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("no node: %v", err)
	}

	var out bytes.Buffer
	if err := drainCommand(ctx, []string{"--addr", "nonsense"}, &out); err == nil {
		t.Error("--addr nonsense accepted")
	}
}

// A node whose sockets do not go within the window plus the margin: the
// command stops waiting and still succeeds (the shutdown closes the rest).
func TestDrainCommandGivesUp(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusAccepted)
		}
		_, _ = io.WriteString(w, `{"draining":true,"sockets_left":3,"started_at":"2026-01-01T00:00:00Z","window":"100ms"}`)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	o := drainOptions{addr: srv.Listener.Addr().String(), window: time.Hour, margin: 200 * time.Millisecond, poll: 20 * time.Millisecond}
	if err := drainNode(ctx, o, &out); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 10*time.Second {
		t.Errorf("gave up after %s, want the node's window (100ms) plus the margin (200ms)", d)
	}
	if !strings.Contains(out.String(), "3 sockets still open") {
		t.Errorf("output %q", out.String())
	}
}

func TestLocalURL(t *testing.T) {
	for addr, want := range map[string]string{
		":4000":          "http://127.0.0.1:4000",
		"0.0.0.0:4000":   "http://127.0.0.1:4000",
		"[::]:4000":      "http://127.0.0.1:4000",
		"10.1.2.3:8080":  "http://10.1.2.3:8080",
		"localhost:4000": "http://localhost:4000",
	} {
		if got, err := localURL(addr); err != nil || got != want {
			t.Errorf("localURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if _, err := localURL("4000"); err == nil {
		t.Error("localURL(4000) accepted")
	}
}

// --help names the drain command (the drain window's flag is checked
// with the others in flags_test.go).
func TestHelpShowsDrainCommand(t *testing.T) {
	var help bytes.Buffer
	_, _ = parseFlags([]string{"--help"}, &help)
	if !strings.Contains(help.String(), "channelsd drain") {
		t.Errorf("--help lacks %q", "channelsd drain")
	}
}
