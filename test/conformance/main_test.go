package conformance

import (
	"testing"

	"go.uber.org/goleak"
)

// Every node is shut down and every client closed in t.Cleanup, and the
// HTTP API client keeps no idle connections, so nothing may be left
// running when the tests end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
