package nodetest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/cmd/channelsd/app"
	"github.com/channelsd/channelsd/node"
)

// Start starts a node serving the default application with the
// conformance channel on 127.0.0.1:<free port>, socket path /socket,
// logging nowhere; opts adjust its configuration before it is built. The
// node is shut down in t.Cleanup (after cleanups registered later, such as
// the test's clients).
func Start(t testing.TB, opts ...func(*node.Config)) *node.Node {
	t.Helper()
	var n *node.Node
	appOpts := app.Options{Conformance: true, Endpoint: func() *channels.Endpoint { return n.Endpoint() }}
	cfg := node.Config{
		Addr:            "127.0.0.1:0",
		SocketPath:      "/socket",
		Router:          app.Router(appOpts),
		SocketHandler:   app.SocketHandler(appOpts),
		Logger:          slog.New(slog.DiscardHandler),
		ShutdownTimeout: 5 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := node.New(cfg)
	if err != nil {
		t.Fatalf("node.New: %v", err)
	}
	if err := n.Start(); err != nil {
		t.Fatalf("node.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			t.Errorf("node.Shutdown: %v", err)
		}
	})
	return n
}
