package harness

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// DefaultHAProxyImage is the load balancer's image; HAPROXY_IMAGE
// overrides it (e.g. haproxy:2.8 on a machine with a registry).
const DefaultHAProxyImage = "channelsd-haproxy:test"

// HAProxyImage is the load balancer's image name in use.
func HAProxyImage() string { return envOr("HAPROXY_IMAGE", DefaultHAProxyImage) }

// ServedByHeader is the response header the load balancer adds to every
// response: the name of the server (node1, node2, ...) that answered.
const ServedByHeader = "X-Served-By"

// Ports inside the load balancer's container, and where its configuration
// goes: the path the official haproxy images read by default, which the
// local image (test/images/haproxy) reads too.
const (
	lbPort       = "8080/tcp"
	lbStatsPort  = "8404/tcp"
	lbConfigPath = "/usr/local/etc/haproxy/haproxy.cfg"
	lbBackend    = "nodes"
)

// LBOptions configure a load balancer. The zero value balances over every
// node of the cluster with health checks on /readyz.
type LBOptions struct {
	// Nodes are the nodes behind the load balancer, counting from 1; nil
	// means all of them.
	Nodes []int
	// NoHealthCheck turns the /readyz checks off: a server then stays in
	// the rotation as long as its name resolves, ready or not.
	NoHealthCheck bool
	// StartupTimeout bounds the start until every server is up; 0 means
	// the cluster's StartupTimeout.
	StartupTimeout time.Duration
}

// LoadBalancer is an HAProxy container on the cluster's network in front
// of the cluster's nodes, round-robin per request, no stickiness. See
// StartLoadBalancer.
type LoadBalancer struct {
	// Alias is its name on the cluster's network (lb1, lb2, ...).
	Alias string
	// Servers are the ids of the nodes behind it (node1, node2, ...),
	// which are also its server names.
	Servers []string

	c      *Cluster
	ctr    *testcontainers.DockerContainer
	config string
	hp     string // 127.0.0.1:<published port of :8080>
	stats  string // 127.0.0.1:<published port of :8404>
}

// Addr is host:port where the load balancer's HTTP port is published on
// loopback (127.0.0.1:<port>).
func (lb *LoadBalancer) Addr() string { return lb.hp }

// HTTPURL is http://<Addr>.
func (lb *LoadBalancer) HTTPURL() string { return "http://" + lb.hp }

// WSURL is the WebSocket endpoint through the load balancer,
// ws://<Addr>/socket/websocket.
func (lb *LoadBalancer) WSURL() string { return "ws://" + lb.hp + "/socket/websocket" }

// LongPollURL is the long-poll endpoint through the load balancer,
// http://<Addr>/socket/longpoll.
func (lb *LoadBalancer) LongPollURL() string { return "http://" + lb.hp + "/socket/longpoll" }

// StatsURL is HAProxy's statistics page (add ";csv" for CSV).
func (lb *LoadBalancer) StatsURL() string { return "http://" + lb.stats + "/stats" }

// Config is the HAProxy configuration the container runs.
func (lb *LoadBalancer) Config() string { return lb.config }

// ContainerID is the load balancer's Docker container id.
func (lb *LoadBalancer) ContainerID() string { return lb.ctr.GetContainerID() }

// StartLoadBalancer starts HAProxy in a container on the cluster's network
// and returns once every server behind it is up (with health checks:
// answering /readyz with 200).
//
// The configuration (see Config): mode http, balance roundrobin over the
// nodes, each a server named and addressed by its network alias
// (node<i>:4000), resolved by Docker's DNS at 127.0.0.11 at run time
// (init-addr none, re-resolved every second), so a node that is stopped
// and started again, even at another address, is found again by name.
// Health check GET /readyz every 500 ms, out after 2 failures, back after
// 1 success: a draining, not-ready or dead node leaves the rotation within
// about a second. Requests are balanced one by one, including consecutive
// requests on one keep-alive client connection (HAProxy's default
// http-keep-alive mode without prefer-last-server); requests that cannot
// reach their server are retried on another one (option redispatch).
// Timeouts: connect 1 s, client and server 60 s (a long poll waits 10 s),
// tunnel 1 h (WebSockets). Every response carries ServedByHeader with the
// server's name. HAProxy logs every request and every server state change
// to the container's log, which the harness prints when the test fails.
//
// The configuration is copied to /usr/local/etc/haproxy/haproxy.cfg and
// the container runs the command `-f /usr/local/etc/haproxy/haproxy.cfg`,
// which both the local image and the official haproxy images run as
// `haproxy -W -db -f ...`. The container's DNS upstream (--dns) is set to
// 127.0.0.1, where nothing listens: Docker's DNS answers the names of the
// network and forwards a query for a name it does not know (a stopped
// node's) there rather than to the host's resolvers.
//
// The container is removed with the cluster; its log is printed with the
// others when the test fails.
func (c *Cluster) StartLoadBalancer(opts LBOptions) *LoadBalancer {
	c.t.Helper()
	if opts.StartupTimeout <= 0 {
		opts.StartupTimeout = c.opts.StartupTimeout
	}
	nodes := opts.Nodes
	if nodes == nil {
		for i := range c.nodes {
			nodes = append(nodes, i+1)
		}
	}
	if len(nodes) == 0 {
		c.t.Fatalf("harness: a load balancer needs at least one node")
	}
	lb := &LoadBalancer{c: c}
	for _, i := range nodes {
		lb.Servers = append(lb.Servers, c.Node(i).Alias)
	}
	n := 1
	for _, nc := range *c.created {
		if strings.HasPrefix(nc.name, "lb") {
			n++
		}
	}
	lb.Alias = "lb" + strconv.Itoa(n)
	lb.config = haproxyConfig(lb.Servers, !opts.NoHealthCheck)

	ctx, cancel := context.WithTimeout(context.Background(), 2*opts.StartupTimeout)
	defer cancel()
	began := time.Now()
	if _, err := c.docker.ImageInspect(ctx, HAProxyImage()); err != nil {
		c.t.Fatalf("harness: image %s is not available (%v).\n"+
			"Images are built locally, never pulled: run `make images` (test/images/build.sh) first.", HAProxyImage(), err)
	}
	ctr, err := runPublished(func() (*testcontainers.DockerContainer, error) {
		return testcontainers.Run(ctx, HAProxyImage(),
			testcontainers.WithLogger(tclog.TestLogger(c.t)),
			network.WithNetwork([]string{lb.Alias}, c.network),
			testcontainers.WithFiles(testcontainers.ContainerFile{
				Reader:            strings.NewReader(lb.config),
				ContainerFilePath: lbConfigPath,
				FileMode:          0o644,
			}),
			testcontainers.WithCmd("-f", lbConfigPath),
			testcontainers.WithExposedPorts(lbPort, lbStatsPort),
			testcontainers.WithHostConfigModifier(publishOnLoopback(lbPort)),
			testcontainers.WithHostConfigModifier(publishOnLoopback(lbStatsPort)),
			testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
				hc.DNS = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
			}),
			testcontainers.WithWaitStrategy(wait.ForHTTP("/stats").
				WithPort(lbStatsPort).
				WithForcedIPv4LocalHost().
				WithPollInterval(100*time.Millisecond).
				WithStartupTimeout(opts.StartupTimeout)),
		)
	})
	c.track(lb.Alias, ctr)
	if err != nil {
		c.t.Fatalf("harness: starting the load balancer (%s): %v\nconfiguration:\n%s", HAProxyImage(), err, lb.config)
	}
	lb.ctr = ctr
	for port, dst := range map[string]*string{lbPort: &lb.hp, lbStatsPort: &lb.stats} {
		p, err := ctr.MappedPort(ctx, port)
		if err != nil {
			c.t.Fatalf("harness: the load balancer's published port %s: %v", port, err)
		}
		*dst = net.JoinHostPort("127.0.0.1", p.Port())
	}
	want := "UP"
	if opts.NoHealthCheck {
		want = "no"
	}
	for _, s := range lb.Servers {
		lb.awaitServer(s, want, time.Until(began.Add(opts.StartupTimeout)))
	}
	c.t.Logf("harness: load balancer %s at %s in front of %s, ready in %v (stats at %s)",
		lb.Alias, lb.Addr(), strings.Join(lb.Servers, ", "), time.Since(began).Round(time.Millisecond), lb.StatsURL())
	return lb
}

// haproxyConfig renders the configuration described at StartLoadBalancer.
func haproxyConfig(servers []string, check bool) string {
	var b strings.Builder
	b.WriteString(`# Written by test/harness (StartLoadBalancer).
global
	log stdout format raw local0 info

defaults
	mode http
	log global
	option httplog
	option dontlognull
	option log-health-checks
	# Every request is balanced on its own, keep-alive or not: HAProxy's
	# default http-keep-alive mode, without prefer-last-server.
	option http-keep-alive
	timeout connect 1s
	timeout client 60s
	timeout server 60s
	timeout http-request 10s
	timeout http-keep-alive 30s
	timeout queue 5s
	timeout check 1s
	timeout tunnel 1h
	timeout client-fin 5s
	retries 3
	option redispatch 1

# Docker's DNS: names of the network, resolved again every second.
resolvers docker
	nameserver docker 127.0.0.11:53
	accepted_payload_size 8192
	resolve_retries 2
	timeout resolve 200ms
	timeout retry 200ms
	hold valid 1s
	hold other 1s
	hold refused 1s
	hold nx 1s
	hold timeout 1s
	hold obsolete 1s

frontend channelsd
	bind :8080
	default_backend ` + lbBackend + `

backend ` + lbBackend + `
	balance roundrobin
	http-response set-header ` + ServedByHeader + ` %s
`)
	srvOpts := "resolvers docker resolve-prefer ipv4 init-addr none"
	if check {
		b.WriteString("\toption httpchk GET /readyz\n\thttp-check expect status 200\n")
		srvOpts = "check inter 500ms fastinter 500ms downinter 500ms fall 2 rise 1 " + srvOpts
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "\tserver %s %s:4000 %s\n", s, s, srvOpts)
	}
	b.WriteString(`
frontend stats
	bind :8404
	http-request set-log-level silent
	stats enable
	stats uri /stats
`)
	return b.String()
}

// ServerStatus returns the state of every server behind the load balancer
// as HAProxy's statistics report it, by server name: "UP", "DOWN",
// "MAINT (resolution)" (its name does not resolve), "UP 1/2" (going down),
// "DOWN 1/1" (coming back), "no check", ...
func (lb *LoadBalancer) ServerStatus(ctx context.Context) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, lb.StatsURL()+";csv", nil)
	if err != nil {
		return nil, err
	}
	resp, err := lb.c.api.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("GET %s;csv: HTTP %d", lb.StatsURL(), resp.StatusCode)
	}
	r := csv.NewReader(resp.Body)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("stats CSV: %w", err)
	}
	if len(rows) == 0 {
		return nil, errors.New("stats CSV: empty")
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[strings.TrimPrefix(strings.TrimSpace(name), "# ")] = i
	}
	px, okp := col["pxname"]
	sv, oks := col["svname"]
	st, okt := col["status"]
	if !okp || !oks || !okt {
		return nil, fmt.Errorf("stats CSV: no pxname, svname or status column in %q", rows[0])
	}
	out := map[string]string{}
	for _, row := range rows[1:] {
		if len(row) <= max(px, sv, st) || row[px] != lbBackend || row[sv] == "BACKEND" {
			continue
		}
		out[row[sv]] = row[st]
	}
	return out, nil
}

// AwaitServer polls the statistics every 100 ms until node i's server is
// in state want (compared with the first word of the status: "UP",
// "DOWN", "MAINT"), failing the test after timeout. It returns how long
// that took.
func (lb *LoadBalancer) AwaitServer(i int, want string, timeout time.Duration) time.Duration {
	lb.c.t.Helper()
	return lb.awaitServer(lb.c.Node(i).Alias, want, timeout)
}

func (lb *LoadBalancer) awaitServer(name, want string, timeout time.Duration) time.Duration {
	t := lb.c.t
	t.Helper()
	began := time.Now()
	deadline := began.Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		st, err := lb.ServerStatus(ctx)
		cancel()
		switch s, ok := st[name]; {
		case err != nil:
			last = err.Error()
		case !ok:
			t.Fatalf("harness: the load balancer has no server %s (it has %v)", name, st)
		case firstWord(s) == want:
			return time.Since(began)
		default:
			last = s
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: load balancer %s: server %s not %s within %v (last: %s)", lb.Alias, name, want, timeout, last)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(strings.TrimSpace(s), " ")
	return w
}

// Logs returns the load balancer's log so far: one line per request and
// per server state change.
func (lb *LoadBalancer) Logs() string {
	lb.c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := containerLogs(ctx, lb.ctr)
	if err != nil {
		lb.c.t.Fatalf("harness: logs of %s: %v", lb.Alias, err)
	}
	return string(data)
}
