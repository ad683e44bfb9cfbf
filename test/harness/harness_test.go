package harness

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestSingleNode checks the harness itself on one node without Redis:
// the node is ready, serves WebSockets on its published port, and Kill
// ends it and its sockets.
func TestSingleNode(t *testing.T) {
	c := Start(t, Options{Nodes: 1, NoRedis: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for name, get := range map[string]func(context.Context, int) (int, error){"readyz": c.Ready, "healthz": c.Healthy} {
		if code, err := get(ctx, 1); err != nil || code != http.StatusOK {
			t.Fatalf("/%s: %d, %v; want 200", name, code, err)
		}
	}
	if lim, err := c.NodeOpenFilesLimit(1); err != nil {
		t.Logf("open-files limit of the node's process: not readable from here: %v", err)
	} else {
		t.Logf("open-files limit of the node's process (soft/hard): %s", lim)
	}

	ws := c.Dial(ctx, 1, nil)
	if r, err := ws.Join(ctx, "conformance:harness", nil); err != nil || r.Status != "ok" {
		t.Fatalf("join: %v %v", r, err)
	}
	ref, err := ws.Push("conformance:harness", "ping", map[string]int{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ws.AwaitReply(ctx, ref); err != nil || r.Status != "ok" {
		t.Fatalf("ping: %v %v", r, err)
	}

	c.Kill(1)
	st, err := ws.AwaitClose(ctx)
	if err != nil {
		t.Fatalf("the socket outlived its node: %v", err)
	}
	if st.Received {
		t.Errorf("a SIGKILLed node sent a close frame: %v", st)
	}
	if _, err := c.Ready(ctx, 1); err == nil {
		t.Errorf("/readyz answered after SIGKILL")
	}
}
