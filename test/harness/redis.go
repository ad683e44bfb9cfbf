package harness

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/testcontainers/testcontainers-go/wait"
)

// StopRedis stops the Redis container (SIGTERM; Redis exits at once
// without persistence) and returns once it has stopped.
func (c *Cluster) StopRedis() {
	c.t.Helper()
	c.needRedis()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	timeout := 5 * time.Second
	if err := c.redis.Stop(ctx, &timeout); err != nil {
		c.t.Fatalf("harness: stopping Redis: %v", err)
	}
}

// StartRedis starts the stopped Redis container again (empty: no
// persistence) and waits until it answers PING.
func (c *Cluster) StartRedis() {
	c.t.Helper()
	c.needRedis()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.StartupTimeout+10*time.Second)
	defer cancel()
	if err := startPublished(ctx, c.redis); err != nil {
		c.t.Fatalf("harness: starting Redis again: %v", err)
	}
}

// RedisAddr is host:port where Redis is published on loopback (it
// changes when Redis is started again).
func (c *Cluster) RedisAddr() string {
	c.t.Helper()
	c.needRedis()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := c.redis.MappedPort(ctx, redisPort)
	if err != nil {
		c.t.Fatalf("harness: Redis's published port: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", p.Port())
}

func (c *Cluster) needRedis() {
	switch {
	case c.redisNodes != nil:
		c.t.Helper()
		c.t.Fatalf("harness: the cluster runs on a Redis Cluster (Options.RedisCluster), not one Redis")
	case c.redis == nil:
		c.t.Helper()
		c.t.Fatalf("harness: the cluster runs without Redis (Options.NoRedis)")
	}
}

// redisReady waits until Redis answers PING on its published port, so
// that a started container is known to serve, not just to run.
// With tls it speaks TLS; with a password it authenticates first.
type redisReady struct {
	timeout  time.Duration
	tls      *tls.Config
	password string
}

func (r redisReady) Timeout() *time.Duration { return &r.timeout }

func (r redisReady) WaitUntilReady(ctx context.Context, target wait.StrategyTarget) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var last error
	for {
		if last = r.ping(ctx, target); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis did not answer PING: %w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r redisReady) ping(ctx context.Context, target wait.StrategyTarget) error {
	st, err := target.State(ctx)
	if err != nil {
		return err
	}
	if !st.Running {
		return fmt.Errorf("container is %s (exit code %d)", st.Status, st.ExitCode)
	}
	p, err := target.MappedPort(ctx, redisPort)
	if err != nil {
		return err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", p.Port()))
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if r.tls != nil {
		tc := tls.Client(conn, r.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	cmds, want := "PING\r\n", []string{"+PONG"}
	if r.password != "" {
		// The harness's own password: hex, fine as an inline command.
		cmds, want = "AUTH "+r.password+"\r\n"+cmds, []string{"+OK", "+PONG"}
	}
	if _, err := conn.Write([]byte(cmds)); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	for _, w := range want {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, w) {
			return fmt.Errorf("redis answered %q, want %s", strings.TrimSpace(line), w)
		}
	}
	return nil
}
