package node

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/test/redistest"
)

// TestMain gives Example_redis the Redis it reads from REDIS_URL, as an
// application would: a loopback redis-server on a free port, unless
// REDIS_URL already names one (which is then used as is). A missing
// redis-server fails the package rather than skipping the example.
func TestMain(m *testing.M) {
	var srv *redistest.Server
	if os.Getenv("REDIS_URL") == "" {
		var err error
		if srv, err = redistest.Launch(); err != nil {
			fmt.Fprintln(os.Stderr, "node tests:", err)
			os.Exit(1)
		}
		if err := os.Setenv("REDIS_URL", srv.URL()); err != nil {
			fmt.Fprintln(os.Stderr, "node tests:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if srv != nil {
		srv.Stop()
		_ = srv.Remove()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
