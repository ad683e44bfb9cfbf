package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	dnetwork "github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/channelsd/channelsd/transport/wsclient"
)

// Default image names; NODE_IMAGE and REDIS_IMAGE override them.
const (
	DefaultNodeImage  = "channelsd:test"
	DefaultRedisImage = "channelsd-redis:test"
)

// Ports inside the containers.
const (
	nodePort  = "4000/tcp"
	redisPort = "6379/tcp"
)

// logTail is how many lines of each container's log a failed test shows.
const logTail = 150

// Options configure a cluster. The zero value is three nodes sharing one
// Redis, with the conformance channel and debug logs.
type Options struct {
	// Nodes is the number of nodes; 0 means 3.
	Nodes int
	// NoRedis starts no Redis and runs the nodes without --redis, each
	// with its in-memory broker: independent single nodes.
	NoRedis bool
	// RedisCluster runs a Redis Cluster instead of one Redis: three
	// masters, each with one replica (six containers of
	// RedisClusterImage(), aliases redis1 to redis6, redis1-3 the first
	// masters), and the nodes get --redis
	// redis-cluster://redis1:6379,redis2:6379,redis3:6379. RedisClient
	// reaches it from this host; StopRedis and the like, which act on the
	// one Redis, fail the test.
	RedisCluster bool
	// RedisClusterTLS runs the Redis Cluster on TLS only, its own links
	// included; the nodes get a rediss-cluster:// URL and trust the CA
	// the harness made for it (redissecure.go).
	RedisClusterTLS bool
	// RedisClusterUser is an ACL user of every Redis Cluster node, whom
	// the nodes authenticate as (its name and password in their URL);
	// the default user then has a password only the harness knows.
	RedisClusterUser *RedisUser
	// RedisPrefix is passed as --redis-prefix when set.
	RedisPrefix string
	// LogLevel is the nodes' --log-level; "" means debug.
	LogLevel string
	// Args are extra flags for every node, after the harness's own.
	Args []string
	// Env is extra environment for every node. Unless it sets them, nodes
	// get CHANNELS_API_KEY=APIKey (without a key a node serves its API to
	// loopback clients only, and the tests reach it through Docker's
	// network) and CHANNELS_METRICS_PUBLIC=true (tests read /metrics as
	// Prometheus would).
	Env map[string]string
	// StartupTimeout bounds each container's start until it is ready; 0
	// means 60 s.
	StartupTimeout time.Duration
	// Files are written into every node's container before it starts:
	// path in the container -> content (a --config file, say).
	Files map[string]string
	// Image is the nodes' image; "" means NodeImage(). An earlier
	// release's comes from BuildNodeImageAt; ReplaceNodeWith moves a node
	// to another.
	Image string
}

// Cluster is a running set of containers. Its methods fail the test (with
// t.Fatalf) on errors of the harness itself; they are meant to be called
// from the test's goroutine (see For for subtests).
type Cluster struct {
	t       testing.TB
	opts    Options
	docker  *testcontainers.DockerClient
	network *testcontainers.DockerNetwork
	redis   *testcontainers.DockerContainer
	// redisNodes are the Redis Cluster's containers (Options.RedisCluster),
	// redis1 first.
	redisNodes []*testcontainers.DockerContainer
	// redisSec is the Redis Cluster's TLS and ACL user, if it has them.
	redisSec *redisSecurity
	nodes    []*Node
	// nodeArgs are the flags every node gets from the cluster (Redis);
	// generation counts the replacements of each node (ReplaceNode).
	nodeArgs   []string
	generation map[int]int
	api        *http.Client
	created    *[]namedContainer // shared with the views made by For
}

// Node is one channelsd container.
type Node struct {
	// ID is the node's --node-id: node1, node2, ...; a replacement
	// (ReplaceNode) gets node1-2, node1-3, ...
	ID string
	// Alias is the node's name on the cluster's network, node<i>, kept
	// by its replacements, as a Kubernetes Service keeps finding the pods
	// of a Deployment.
	Alias string
	// Image is the image the node runs.
	Image string

	c  *testcontainers.DockerContainer
	mu sync.Mutex
	hp string     // 127.0.0.1:<published port>, refreshed on every start
	ip netip.Addr // address on the cluster's network, saved by Disconnect
}

// Addr is host:port where the node's port 4000 is published on loopback.
// It changes when the node is started again.
func (n *Node) Addr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hp
}

// HTTPURL is http://<Addr>.
func (n *Node) HTTPURL() string { return "http://" + n.Addr() }

// WSURL is the node's WebSocket endpoint, ws://<Addr>/socket/websocket.
func (n *Node) WSURL() string { return "ws://" + n.Addr() + "/socket/websocket" }

// ContainerID is the node's Docker container id.
func (n *Node) ContainerID() string { return n.c.GetContainerID() }

var envOnce sync.Once

// setTestcontainersEnv applies the defaults described in the package doc
// before testcontainers reads its configuration.
func setTestcontainersEnv() {
	envOnce.Do(func() {
		for k, v := range map[string]string{
			"TESTCONTAINERS_RYUK_DISABLED": "true",
			"TESTCONTAINERS_HOST_OVERRIDE": "localhost",
		} {
			if _, ok := os.LookupEnv(k); !ok {
				_ = os.Setenv(k, v)
			}
		}
	})
}

// NodeImage and RedisImage are the image names in use.
func NodeImage() string  { return envOr("NODE_IMAGE", DefaultNodeImage) }
func RedisImage() string { return envOr("REDIS_IMAGE", DefaultRedisImage) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Start creates the network, Redis and the nodes, and returns once every
// node answers /readyz with 200. It fails the test at once when Docker is
// unreachable or an image is missing.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	setTestcontainersEnv()
	if opts.Nodes <= 0 {
		opts.Nodes = 3
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	if opts.StartupTimeout <= 0 {
		opts.StartupTimeout = 60 * time.Second
	}
	if opts.Image == "" {
		opts.Image = NodeImage()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*opts.StartupTimeout)
	defer cancel()

	began := time.Now()
	docker, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		t.Fatalf("harness: cannot reach the Docker engine: %v\n"+
			"The cluster tests need Docker (set DOCKER_HOST if it is not on the default socket); see test/README.md.", err)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	c := &Cluster{t: t, opts: opts, docker: docker, api: &http.Client{Transport: tr, Timeout: 10 * time.Second}, created: new([]namedContainer), generation: map[int]int{}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		_ = docker.Close()
	})
	images := []string{opts.Image}
	switch {
	case opts.NoRedis && opts.RedisCluster:
		t.Fatalf("harness: Options.NoRedis and Options.RedisCluster together")
	case !opts.RedisCluster && (opts.RedisClusterTLS || opts.RedisClusterUser != nil):
		t.Fatalf("harness: Options.RedisClusterTLS and RedisClusterUser need Options.RedisCluster")
	case opts.RedisCluster:
		images = append(images, RedisClusterImage())
	case !opts.NoRedis:
		images = append(images, RedisImage())
	}
	for _, img := range images {
		if _, err := docker.ImageInspect(ctx, img); err != nil {
			t.Fatalf("harness: image %s is not available (%v).\n"+
				"Images are built locally, never pulled: run `make images` (test/images/build.sh) first.", img, err)
		}
	}

	c.network, err = network.New(ctx)
	if err != nil {
		t.Fatalf("harness: creating the Docker network: %v", err)
	}
	nw := c.network
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := nw.Remove(ctx); err != nil {
			t.Errorf("harness: removing network %s: %v", nw.Name, err)
		}
	})
	// Registered after the network's removal, so it runs before it.
	t.Cleanup(c.teardown)

	var nodeArgs []string
	if opts.RedisCluster {
		url, err := c.startRedisCluster(ctx)
		if err != nil {
			t.Fatalf("harness: %v", err)
		}
		nodeArgs = append(nodeArgs, "--redis", url)
	} else if !opts.NoRedis {
		c.redis, err = runPublished(func() (*testcontainers.DockerContainer, error) {
			return testcontainers.Run(ctx, RedisImage(),
				testcontainers.WithLogger(tclog.TestLogger(t)),
				network.WithNetwork([]string{"redis"}, c.network),
				testcontainers.WithExposedPorts(redisPort),
				testcontainers.WithHostConfigModifier(publishOnLoopback(redisPort)),
				testcontainers.WithWaitStrategy(redisReady{timeout: opts.StartupTimeout}),
			)
		})
		c.track("redis", c.redis)
		if err != nil {
			t.Fatalf("harness: starting Redis (%s): %v", RedisImage(), err)
		}
		nodeArgs = append(nodeArgs, "--redis", "redis://redis:6379/0")
	}
	if opts.RedisPrefix != "" && !opts.NoRedis {
		nodeArgs = append(nodeArgs, "--redis-prefix", opts.RedisPrefix)
	}

	// Start the nodes concurrently; each waits for its own /readyz.
	c.nodeArgs = nodeArgs
	c.nodes = make([]*Node, opts.Nodes)
	errs := make([]error, opts.Nodes)
	var wg sync.WaitGroup
	for i := range c.nodes {
		id := fmt.Sprintf("node%d", i+1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctr, err := c.runNode(ctx, id, id, opts.Image)
			c.nodes[i] = &Node{ID: id, Alias: id, Image: opts.Image, c: ctr}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, n := range c.nodes {
		c.track(n.ID, n.c)
	}
	for i, n := range c.nodes {
		if errs[i] != nil {
			t.Fatalf("harness: starting %s (%s): %v", n.ID, opts.Image, errs[i])
		}
		if err := c.refreshAddr(ctx, n); err != nil {
			t.Fatalf("harness: %s: %v", n.ID, err)
		}
	}
	what := fmt.Sprintf("%d node(s)", opts.Nodes)
	switch {
	case opts.RedisCluster:
		what += fmt.Sprintf(" and a Redis Cluster of %d masters with %d replica(s) each", redisClusterMasters, redisClusterReplicas)
	case !opts.NoRedis:
		what += " and Redis"
	}
	t.Logf("harness: %s ready in %v (network %s): %s", what,
		time.Since(began).Round(time.Millisecond), c.network.Name, c.describe())
	return c
}

func (c *Cluster) describe() string {
	var b strings.Builder
	for i, n := range c.nodes {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s at %s", n.ID, n.Addr())
		if lim, err := c.NodeOpenFilesLimit(i + 1); err == nil {
			fmt.Fprintf(&b, " (max open files %s)", lim)
		}
	}
	return b.String()
}

// publishOnLoopback publishes port on 127.0.0.1 only, on a port the
// engine picks.
func publishOnLoopback(port string) func(*container.HostConfig) {
	p := dnetwork.MustParsePort(port)
	return func(hc *container.HostConfig) {
		if hc.PortBindings == nil {
			hc.PortBindings = dnetwork.PortMap{}
		}
		hc.PortBindings[p] = []dnetwork.PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: "0"}}
	}
}

// portTaken reports whether the engine failed to publish a port because
// another process bound it between the engine's choice and its own bind:
// the engine picks from the ephemeral range, where every outgoing
// connection of a load generator beside the tests takes a port too.
func portTaken(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address already in use")
}

// publishTries is how many times a container is started when its port
// was taken each time.
const publishTries = 5

// runPublished runs run, which creates and starts a container with a
// published port, again when that port was taken (portTaken), removing
// the container that could not start. run builds its options afresh each
// time: a file's reader is read once.
func runPublished(run func() (*testcontainers.DockerContainer, error)) (*testcontainers.DockerContainer, error) {
	for i := 1; ; i++ {
		ctr, err := run()
		if i == publishTries || !portTaken(err) {
			return ctr, err
		}
		if ctr != nil {
			_ = ctr.Terminate(context.Background())
		}
	}
}

// startPublished starts a stopped container again, again when the port
// the engine picked for it was taken (portTaken).
func startPublished(ctx context.Context, ctr *testcontainers.DockerContainer) error {
	for i := 1; ; i++ {
		err := ctr.Start(ctx)
		if i == publishTries || !portTaken(err) {
			return err
		}
	}
}

// namedContainer is a container the cluster created, for teardown.
type namedContainer struct {
	name string
	ctr  *testcontainers.DockerContainer
}

// track adds ctr (nil is fine) to what teardown removes.
func (c *Cluster) track(name string, ctr *testcontainers.DockerContainer) {
	if ctr != nil {
		*c.created = append(*c.created, namedContainer{name, ctr})
	}
}

// teardown dumps the containers' logs if the test failed, then removes
// them all at once.
func (c *Cluster) teardown() {
	t := c.t
	for _, nc := range *c.created {
		c.dumpLogs(nc.name, nc.ctr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(*c.created))
	for i, nc := range *c.created {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = nc.ctr.Terminate(ctx, testcontainers.StopTimeout(0))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("harness: removing %s: %v", (*c.created)[i].name, err)
		}
	}
}

func (c *Cluster) dumpLogs(name string, ctr *testcontainers.DockerContainer) {
	t := c.t
	dir := os.Getenv("CLUSTER_LOG_DIR")
	if !t.Failed() && os.Getenv("CLUSTER_LOGS") == "" && dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	logs, err := containerLogs(ctx, ctr)
	if err != nil {
		t.Logf("harness: logs of %s: %v", name, err)
		return
	}
	if dir != "" {
		file := filepath.Join(dir, sanitize(t.Name())+"."+name+".log")
		if err := os.MkdirAll(dir, 0o755); err == nil {
			err = os.WriteFile(file, logs, 0o644)
		}
		if err != nil {
			t.Logf("harness: saving the logs of %s: %v", name, err)
		} else {
			t.Logf("harness: logs of %s saved in %s", name, file)
		}
	}
	if t.Failed() || os.Getenv("CLUSTER_LOGS") != "" {
		lines := strings.Split(strings.TrimRight(string(logs), "\n"), "\n")
		skipped := ""
		if len(lines) > logTail {
			skipped = fmt.Sprintf(" (last %d of %d lines)", logTail, len(lines))
			lines = lines[len(lines)-logTail:]
		}
		t.Logf("harness: ---- logs of %s%s ----\n%s\n---- end of %s ----", name, skipped, strings.Join(lines, "\n"), name)
	}
}

func containerLogs(ctx context.Context, ctr *testcontainers.DockerContainer) ([]byte, error) {
	rc, err := ctr.Logs(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return data, err
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
}

func (c *Cluster) refreshAddr(ctx context.Context, n *Node) error {
	p, err := n.c.MappedPort(ctx, nodePort)
	if err != nil {
		return fmt.Errorf("published port: %w", err)
	}
	n.mu.Lock()
	n.hp = net.JoinHostPort("127.0.0.1", p.Port())
	n.mu.Unlock()
	return nil
}

// For returns a view of the cluster that reports failures to t and
// registers cleanups (such as closing Dial's clients) with t: use it in
// subtests of the test that started the cluster. The containers stay the
// parent test's.
func (c *Cluster) For(t testing.TB) *Cluster {
	cp := *c
	cp.t = t
	return &cp
}

// N is the number of nodes.
func (c *Cluster) N() int { return len(c.nodes) }

// Node returns node i, counting from 1 as the node ids do.
func (c *Cluster) Node(i int) *Node {
	c.t.Helper()
	if i < 1 || i > len(c.nodes) {
		c.t.Fatalf("harness: no node %d (the cluster has %d)", i, len(c.nodes))
	}
	return c.nodes[i-1]
}

// Network is the name of the cluster's Docker network.
func (c *Cluster) Network() string { return c.network.Name }

// Ready returns node i's /readyz status code (0 with an error when the
// request failed).
func (c *Cluster) Ready(ctx context.Context, i int) (int, error) {
	return c.get(ctx, c.Node(i).HTTPURL()+"/readyz")
}

// Healthy returns node i's /healthz status code.
func (c *Cluster) Healthy(ctx context.Context, i int) (int, error) {
	return c.get(ctx, c.Node(i).HTTPURL()+"/healthz")
}

func (c *Cluster) get(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.api.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// AwaitReady polls node i's /readyz every 100 ms until it answers want,
// failing the test after timeout. It returns how long that took.
func (c *Cluster) AwaitReady(i int, want int, timeout time.Duration) time.Duration {
	c.t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		code, err := c.Ready(ctx, i)
		cancel()
		if err == nil && code == want {
			return time.Since(began)
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "HTTP " + strconv.Itoa(code)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("harness: node %d's /readyz did not answer %d within %v (last: %s)", i, want, timeout, last)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// APIKey is the nodes' API key unless Options.Env sets another.
const APIKey = "harness-api-key"

// APIKey returns the nodes' API key.
func (c *Cluster) APIKey() string {
	if k, ok := c.opts.Env["CHANNELS_API_KEY"]; ok {
		return k
	}
	return APIKey
}

// Broadcast publishes through node i's HTTP API (POST /api/broadcast) and
// returns an error unless the node answers 202.
func (c *Cluster) Broadcast(ctx context.Context, i int, topic, event string, payload any) error {
	body, err := json.Marshal(map[string]any{"topic": topic, "event": event, "payload": payload})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Node(i).HTTPURL()+"/api/broadcast", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.APIKey())
	resp, err := c.api.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST /api/broadcast on node %d: HTTP %d: %s", i, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}

// Dial opens a WebSocket to node i with the given connect params; the
// client is closed in t.Cleanup.
func (c *Cluster) Dial(ctx context.Context, i int, params map[string]string) *wsclient.Client {
	c.t.Helper()
	ws, err := wsclient.Dial(ctx, c.Node(i).WSURL(), wsclient.Options{Params: params})
	if err != nil {
		c.t.Fatalf("harness: connecting to node %d: %v", i, err)
	}
	c.t.Cleanup(func() { _ = ws.Close() })
	return ws
}
