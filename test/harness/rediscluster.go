package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
)

// Shape of the Redis Cluster of Options.RedisCluster: three masters, each
// with one replica, so that a master's failure is survived as in a managed
// cluster.
const (
	redisClusterMasters  = 3
	redisClusterReplicas = 1
	// redisClusterNodeTimeout is the nodes' cluster-node-timeout: how long
	// a master may stay silent before its replica takes over. Short, so
	// that a failover takes seconds; not so short that a loaded 2-core
	// machine running -race trips it.
	redisClusterNodeTimeout = 3 * time.Second
)

// RedisClusterImage is the image of the Redis Cluster's nodes:
// REDIS_CLUSTER_IMAGE, else RedisImage(). Sharded pub/sub needs Redis 7:
// where the host's Redis is older, REDIS_CLUSTER_IMAGE=redis:7 runs the
// cluster on the official image while one Redis stays the local one.
func RedisClusterImage() string { return envOr("REDIS_CLUSTER_IMAGE", RedisImage()) }

// redisClusterAlias is the network alias, and announced host name, of
// Redis Cluster node i (from 1).
func redisClusterAlias(i int) string { return "redis" + strconv.Itoa(i) }

// redisClusterArgs is the command of Redis Cluster node alias: the
// options go to redis-server (the local image's entrypoint, and the
// official image's for a command that begins with "--"). The nodes
// announce their alias rather than their address, as a cluster in
// Kubernetes announces stable names: a node that restarts with another
// address is found again, by channelsd's nodes and by RedisClient alike.
func redisClusterArgs(alias string) []string {
	return []string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.FormatInt(redisClusterNodeTimeout.Milliseconds(), 10),
		"--cluster-announce-hostname", alias,
		"--cluster-preferred-endpoint-type", "hostname",
		// A replica's first sync starts at once, not after the 5 s a
		// master waits by default for more replicas to share it.
		"--repl-diskless-sync-delay", "0",
		// While a dead master's replica is not yet promoted, the other
		// masters go on serving their slots, as a managed cluster is
		// advised to run: with the default (yes) every shard refuses
		// commands from when the master is judged failed until the
		// promotion, and every topic pauses, not only the failed shard's.
		"--cluster-require-full-coverage", "no",
		"--save", "", "--appendonly", "no", "--protected-mode", "no",
	}
}

// startRedisCluster starts the Redis Cluster's containers together, joins
// them into one cluster with redis-cli --cluster create (run in the
// first), waits until every node reports the cluster ok, and returns the
// --redis value that reaches it from the cluster's network.
func (c *Cluster) startRedisCluster(ctx context.Context) (string, error) {
	n := redisClusterMasters * (1 + redisClusterReplicas)
	img := RedisClusterImage()
	began := time.Now()
	sec, err := newRedisSecurity(c.opts, n)
	if err != nil {
		return "", err
	}
	c.redisSec = sec
	ctrs := make([]*testcontainers.DockerContainer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range ctrs {
		wg.Go(func() {
			alias := redisClusterAlias(i + 1)
			ctrs[i], errs[i] = runPublished(func() (*testcontainers.DockerContainer, error) {
				return testcontainers.Run(ctx, img,
					testcontainers.WithLogger(tclog.TestLogger(c.t)),
					network.WithNetwork([]string{alias}, c.network),
					testcontainers.WithCmd(append(redisClusterArgs(alias), sec.redisArgs()...)...),
					testcontainers.WithFiles(sec.redisFiles(alias)...),
					testcontainers.WithExposedPorts(redisPort),
					testcontainers.WithHostConfigModifier(publishOnLoopback(redisPort)),
					testcontainers.WithWaitStrategy(redisReady{timeout: c.opts.StartupTimeout, tls: sec.clientTLS(alias), password: sec.password()}),
				)
			})
		})
	}
	wg.Wait()
	for i, ctr := range ctrs {
		c.track(redisClusterAlias(i+1), ctr)
	}
	if err := errors.Join(errs...); err != nil {
		return "", fmt.Errorf("starting the Redis Cluster's nodes (%s): %w", img, err)
	}
	c.redisNodes = ctrs

	// redis-cli --cluster create introduces the nodes to one another by
	// address (CLUSTER MEET takes no host name); what they announce to
	// clients is their alias (redisClusterArgs).
	started := time.Now()
	args := append([]string{"redis-cli"}, sec.cliArgs()...)
	args = append(args, "--cluster", "create")
	for i, ctr := range ctrs {
		ip, err := ctr.ContainerIP(ctx)
		if err != nil || ip == "" {
			return "", fmt.Errorf("address of %s on the network: %q %v", redisClusterAlias(i+1), ip, err)
		}
		args = append(args, net.JoinHostPort(ip, "6379"))
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(redisClusterReplicas), "--cluster-yes")
	code, out, err := ctrs[0].Exec(ctx, args, tcexec.Multiplexed())
	var text []byte
	if out != nil {
		text, _ = io.ReadAll(out)
	}
	if err != nil || code != 0 {
		return "", fmt.Errorf("redis-cli --cluster create: exit %d, %v:\n%s", code, err, text)
	}
	created := time.Now()
	if err := c.awaitRedisCluster(ctx); err != nil {
		return "", err
	}
	c.t.Logf("harness: Redis Cluster (%s) up in %v: containers %v, redis-cli --cluster create %v, all nodes ok %v",
		img, time.Since(began).Round(time.Millisecond), started.Sub(began).Round(time.Millisecond),
		created.Sub(started).Round(time.Millisecond), time.Since(created).Round(time.Millisecond))
	return c.redisClusterURL("", ""), nil
}

// redisClusterURL is the --redis value of the nodes, naming the first
// masters, as user with password if given.
func (c *Cluster) redisClusterURL(user, password string) string {
	seeds := make([]string, redisClusterMasters)
	for i := range seeds {
		seeds[i] = redisClusterAlias(i+1) + ":6379"
	}
	return c.redisSec.clusterURL(seeds, user, password)
}

// RedisClusterURL is the --redis value the nodes got with the ACL user's
// name and password replaced by user and password (Options.RedisClusterUser),
// for a node started with other credentials.
func (c *Cluster) RedisClusterURL(user, password string) string {
	c.t.Helper()
	if c.redisNodes == nil || c.redisSec == nil || c.redisSec.user == nil {
		c.t.Fatalf("harness: RedisClusterURL needs Options.RedisCluster and Options.RedisClusterUser")
	}
	return c.redisClusterURL(user, password)
}

// awaitRedisCluster polls every node until all are ready
// (redisNodeReady).
func (c *Cluster) awaitRedisCluster(ctx context.Context) error {
	var last string
	for {
		last = ""
		for i := range c.redisNodes {
			if msg := c.redisNodeReady(ctx, i); msg != "" {
				last = fmt.Sprintf("%s: %s", redisClusterAlias(i+1), msg)
				break
			}
		}
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Redis Cluster did not form: %w (last: %s)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond): // polling interval
		}
	}
}

// redisNodeReady returns "" when Redis Cluster node i (from 0) sees the
// whole cluster ok, every node in its role, and is linked to its master if
// it is a replica; else what it lacks.
func (c *Cluster) redisNodeReady(ctx context.Context, i int) string {
	rc, err := c.redisNodeClient(ctx, i)
	if err != nil {
		return err.Error()
	}
	defer rc.Close()
	info, err := rc.ClusterInfo(ctx).Result()
	if err != nil {
		return err.Error()
	}
	n := redisClusterMasters * (1 + redisClusterReplicas)
	for _, want := range []string{"cluster_state:ok", "cluster_slots_ok:16384", "cluster_known_nodes:" + strconv.Itoa(n)} {
		if !strings.Contains(info, want+"\r\n") {
			return "CLUSTER INFO lacks " + want
		}
	}
	// Until gossip has told it, a node takes a replica for a master
	// without slots.
	nodes, err := rc.ClusterNodes(ctx).Result()
	if err != nil {
		return err.Error()
	}
	masters, replicas := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		if f := strings.Fields(line); len(f) > 2 {
			for _, flag := range strings.Split(f[2], ",") {
				switch flag {
				case "master":
					masters++
				case "slave":
					replicas++
				}
			}
		}
	}
	if masters != redisClusterMasters || replicas != redisClusterMasters*redisClusterReplicas {
		return fmt.Sprintf("CLUSTER NODES shows %d masters and %d replicas", masters, replicas)
	}
	repl, err := rc.Info(ctx, "replication").Result()
	if err != nil {
		return err.Error()
	}
	if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
		return "replica not yet linked to its master"
	}
	return ""
}

// redisNodeClient is a plain client of Redis Cluster node i (from 0)
// through its published port.
func (c *Cluster) redisNodeClient(ctx context.Context, i int) (*goredis.Client, error) {
	addr, err := c.redisNodeAddr(ctx, i)
	if err != nil {
		return nil, err
	}
	return goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 2 * time.Second,
		Password: c.redisSec.password(), TLSConfig: c.redisSec.clientTLS(redisClusterAlias(i + 1))}), nil
}

func (c *Cluster) redisNodeAddr(ctx context.Context, i int) (string, error) {
	p, err := c.redisNodes[i].MappedPort(ctx, redisPort)
	if err != nil {
		return "", fmt.Errorf("published port of %s: %w", redisClusterAlias(i+1), err)
	}
	return net.JoinHostPort("127.0.0.1", p.Port()), nil
}

// RedisClient returns a go-redis client of the cluster's Redis for checks
// from this host, closed in t.Cleanup: a plain client of the one Redis,
// or a cluster client of the Redis Cluster whose connections to a node
// (which the cluster names by its alias, unknown on this host) go to that
// node's published port, over TLS with Options.RedisClusterTLS, as the
// default user with Options.RedisClusterUser.
func (c *Cluster) RedisClient() goredis.UniversalClient {
	c.t.Helper()
	var rc goredis.UniversalClient
	if c.redisNodes == nil {
		rc = goredis.NewClient(&goredis.Options{Addr: c.RedisAddr()})
	} else {
		var d net.Dialer
		// Every node is a seed: the client starts while one is dead.
		var seeds []string
		for i := range c.redisNodes {
			seeds = append(seeds, redisClusterAlias(i+1)+":6379")
		}
		rc = goredis.NewClusterClient(&goredis.ClusterOptions{
			Addrs:    seeds,
			Password: c.redisSec.password(),
			Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
				host, _, err := net.SplitHostPort(addr)
				if err != nil {
					return nil, err
				}
				for i := range c.redisNodes {
					if host == redisClusterAlias(i+1) {
						hp, err := c.redisNodeAddr(ctx, i)
						if err != nil {
							return nil, err
						}
						conn, err := d.DialContext(ctx, network, hp)
						if err != nil {
							return nil, err
						}
						return c.redisSec.dialTLS(ctx, conn, host)
					}
				}
				return nil, fmt.Errorf("harness: %s is no node of the Redis Cluster", addr)
			},
		})
	}
	c.t.Cleanup(func() { _ = rc.Close() })
	return rc
}

// RedisClusterNodes is the number of Redis Cluster containers (0 without
// Options.RedisCluster).
func (c *Cluster) RedisClusterNodes() int { return len(c.redisNodes) }
