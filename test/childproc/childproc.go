package childproc

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Start runs os.Args[0] with args and env ("NAME=value") added to this
// process's environment, and returns the first line the child writes on
// stdout, without its newline. The child's stderr is this process's. When
// tb ends, the child's stdin is closed and the child given 30 s to exit
// before it is killed; an exit with an error is reported through tb.
func Start(tb testing.TB, env string, args ...string) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), env)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	line, lerr := bufio.NewReader(stdout).ReadString('\n')
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = stdin.Close()
		var err error
		select {
		case err = <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			err = <-exited
		}
		if err != nil {
			tb.Errorf("child process: %v", err)
		}
	})
	if lerr != nil {
		tb.Fatalf("child process said %q: %v", line, lerr)
	}
	return strings.TrimSuffix(line, "\n")
}
