package harness

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestBuildNodeImageAt builds an earlier release's image from git, then
// asks again and gets the cached one; an unknown commit is a clear error.
func TestBuildNodeImageAt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()
	tag, err := BuildNodeImageAt(ctx, "b847059")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s ready in %v", tag, time.Since(began).Round(time.Millisecond))
	if !strings.HasPrefix(tag, "channelsd:b847059") {
		t.Errorf("tag %s, want channelsd:b847059...", tag)
	}
	began = time.Now()
	if again, err := BuildNodeImageAt(ctx, "b847059"); err != nil || again != tag {
		t.Fatalf("second call: %s, %v; want %s from the cache", again, err, tag)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("the cached image took %v", d)
	}
	if _, err := BuildNodeImageAt(ctx, "no-such-commit"); err == nil || !strings.Contains(err.Error(), "not in the clone") {
		t.Errorf("unknown commit: %v, want an error saying it is not in the clone", err)
	}
}
