package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/logtest"
)

// Server is a redis-server process without persistence, which a test may
// stop and start again on the same port.
type Server struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	args []string // extra redis-server arguments
	out  LockedBuffer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start runs a redis-server for the test, stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	s.mu.Lock()
	err = s.startOnFreePort(freePort)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Launch runs a redis-server outside any test, for a TestMain that hands
// one to code reading its address from the environment (a package's
// examples). The caller calls Stop, and Remove for its directory. Start
// and Signal are for servers from Start only.
func Launch() (*Server, error) {
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	s := &Server{bin: bin, dir: dir}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startOnFreePort(freePort); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// StartCluster runs n redis-servers in cluster mode (their cluster bus
// on port+10000), without slots: the test assigns them and joins the
// nodes.
func StartCluster(t testing.TB, n int) []*Server {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	var out []*Server
	for range n {
		s := &Server{t: t, bin: bin, dir: t.TempDir(),
			args: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"}}
		s.mu.Lock()
		err := s.startOnFreePort(clusterPort)
		s.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		out = append(out, s)
	}
	return out
}

// clusterPort returns a free port whose cluster bus port is free too.
func clusterPort() (int, error) {
	for range 100 {
		p, err := freePort()
		if err != nil {
			return 0, err
		}
		if p+10000 > 65535 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+10000)))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, errors.New("redistest: no free port pair for a cluster node")
}

// errPortTaken: the port found free was taken before redis-server bound
// it. Between a probe's close and the server's bind, any process may get
// it, an outgoing connection among them (a port found free comes from the
// ephemeral range, which load generators running beside the tests use up
// by the thousand).
var errPortTaken = errors.New("redistest: port taken before redis-server bound it")

// startOnFreePort starts a new server, with s.mu held, on a port from
// pick, and on another one if that was taken meanwhile.
func (s *Server) startOnFreePort(pick func() (int, error)) error {
	var err error
	for range 10 {
		if s.port, err = pick(); err != nil {
			return err
		}
		if err = s.start(); !errors.Is(err, errPortTaken) {
			return err
		}
	}
	return err
}

// Remove deletes the directory of a server from Launch, once stopped.
func (s *Server) Remove() error { return os.RemoveAll(s.dir) }

func binary() (string, error) {
	if b := os.Getenv("REDIS_SERVER"); b != "" {
		return b, nil
	}
	if _, err := os.Stat("/usr/bin/redis-server"); err == nil {
		return "/usr/bin/redis-server", nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	return "", errors.New("redistest: redis-server not found: these tests run a real Redis. " +
		"Install the Debian package redis-server (apt-get install redis-server; " +
		"make test's prerequisite check does) or point REDIS_SERVER at the binary")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redistest: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr is host:port on loopback.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Output is what the server printed.
func (s *Server) Output() string { return s.out.String() }

// Start (re)starts the process on its port and waits until it answers
// PING.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.t.Fatal("redis-server already running")
	}
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// start runs the process, with s.mu held. A process that just started
// offers no readiness event, so this polls PING, within a deadline.
func (s *Server) start() error {
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--daemonize", "no"}, s.args...)
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout = &s.out
	cmd.Stderr = &s.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: starting %s: %w", s.bin, err)
	}
	printed := len(s.out.String())
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	deadline := time.Now().Add(10 * time.Second)
	for !Ping(s.Addr()) {
		select {
		case <-exited:
			s.cmd = nil
			if strings.Contains(s.out.String()[printed:], "Address already in use") {
				return fmt.Errorf("%w (%d)", errPortTaken, s.port)
			}
			return fmt.Errorf("redistest: redis-server exited during startup:\n%s", s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			s.cmd = nil
			return fmt.Errorf("redistest: redis-server on %s not ready after 10s:\n%s", s.Addr(), s.out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Stop kills the process (SIGKILL: a crash, not a shutdown) and waits.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Signal sends sig to the running process (SIGSTOP freezes it with its
// connections open: a partition, as far as a client can tell).
func (s *Server) Signal(sig os.Signal) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		s.t.Fatal("redis-server not running")
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

// Ping speaks just enough RESP to see whether Redis at addr is up,
// without a client library (and its goroutines).
func Ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "+PONG\r\n"
}

// LockedBuffer is a bytes.Buffer safe for concurrent writers, for
// capturing logs in tests: the one of package logtest.
type LockedBuffer = logtest.Buffer
