package hostile

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// nodeBin is the channelsd binary TestMain built.
var nodeBin string

// figures is the table the soak prints, kept for TestMain.
var figures struct {
	sync.Mutex
	text string
}

// TestMain builds ./cmd/channelsd as `make build` would (no race
// detector: the heap figures are a production binary's), or takes the
// binary $HOSTILE_NODE_BIN names (another build to compare), runs the tests,
// then prints the figures: to stdout (shown with -v, or when the package
// fails) and, with HOSTILE_TABLE=<file>, to that file, which `make
// test-hostile` prints.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostile-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(2)
	}
	nodeBin = os.Getenv("HOSTILE_NODE_BIN")
	if nodeBin == "" {
		nodeBin = filepath.Join(dir, "channelsd")
		build := exec.Command("go", "build", "-trimpath", "-o", nodeBin, "github.com/channelsd/channelsd/cmd/channelsd")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "hostile: building channelsd: %v\n%s", err, out)
			os.RemoveAll(dir)
			os.Exit(2)
		}
	}
	code := m.Run()
	// Every attacker and client goroutine ends with the test: a leftover
	// would be a loop the soak does not bound.
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "hostile: goroutines left: %v\n", err)
		code = 1
	}
	os.RemoveAll(dir)
	figures.Lock()
	text := figures.text
	figures.Unlock()
	fmt.Print(text)
	if f := os.Getenv("HOSTILE_TABLE"); f != "" {
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "hostile: writing %s: %v\n", f, err)
		}
	}
	os.Exit(code)
}
