package redis

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	pubsubredis "github.com/channelsd/channelsd/pubsub/redis"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := goleak.Find()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
				code = 1
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Exit(code)
}

// server is a redis-server process on a free loopback port.
type server struct {
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	out    bytes.Buffer
}

func startRedis(t *testing.T) *server {
	t.Helper()
	bin := os.Getenv("REDIS_SERVER")
	if bin == "" {
		bin = "/usr/bin/redis-server"
	}
	if _, err := os.Stat(bin); err != nil {
		if p, err := exec.LookPath("redis-server"); err == nil {
			bin = p
		} else {
			t.Fatal("redis-server not found: the presence/redis tests need a real Redis " +
				"(apt-get install redis-server, or set REDIS_SERVER to the binary)")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), exited: make(chan struct{})}
	s.cmd = exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--daemonize", "no")
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for !ping(s.addr) {
		select {
		case <-s.exited:
			t.Fatalf("redis-server exited at startup:\n%s", s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s not ready after 10s", s.addr)
		}
		time.Sleep(10 * time.Millisecond) // a fresh process offers no readiness event
	}
	return s
}

func ping(addr string) bool {
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

func (s *server) url() string { return "redis://" + s.addr }

func (s *server) client(t *testing.T) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: s.addr, Protocol: 2, MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// testNode is one channelsd node: a Redis PubSub and a tracker over it.
type testNode struct {
	id string
	ps *pubsubredis.PubSub
	tr *Tracker
}

const (
	testHeartbeat = 100 * time.Millisecond
	testDeadAfter = 300 * time.Millisecond
	testCoalesce  = 20 * time.Millisecond
)

func newNode(t *testing.T, s *server, id string, tweak ...func(*Options)) *testNode {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ps, err := pubsubredis.New(ctx, pubsubredis.Options{URL: s.url(), NodeID: id, Prefix: "test", Logger: log})
	if err != nil {
		t.Fatalf("pubsub %s: %v", id, err)
	}
	opt := Options{
		Address: s.url(), NodeID: id, Prefix: "test", PubSub: ps,
		Heartbeat: testHeartbeat, DeadAfter: testDeadAfter, Coalesce: testCoalesce, Logger: log,
	}
	for _, f := range tweak {
		f(&opt)
	}
	tr, err := New(ctx, opt)
	if err != nil {
		_ = ps.Close()
		t.Fatalf("tracker %s: %v", id, err)
	}
	n := &testNode{id: id, ps: ps, tr: tr}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close tracker %s: %v", id, err)
		}
		if err := ps.Close(); err != nil {
			t.Errorf("close pubsub %s: %v", id, err)
		}
	})
	return n
}
