package harness

// A node's life: started on the cluster's network, replaced as a rolling
// update does, killed, stopped and started again, cut off from the
// network and attached to another.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	dnetwork "github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
)

// runNode starts a node container of image with node id id under alias
// on the cluster's network and waits for its /readyz.
func (c *Cluster) runNode(ctx context.Context, id, alias, image string) (*testcontainers.DockerContainer, error) {
	return runPublished(func() (*testcontainers.DockerContainer, error) {
		return c.runNodeWith(ctx, id, alias, image, nil,
			testcontainers.WithExposedPorts(nodePort),
			testcontainers.WithHostConfigModifier(publishOnLoopback(nodePort)),
			testcontainers.WithWaitStrategy(wait.ForHTTP("/readyz").
				WithPort(nodePort).
				WithForcedIPv4LocalHost().
				WithPollInterval(100*time.Millisecond).
				WithStartupTimeout(c.opts.StartupTimeout)))
	})
}

// runNodeWith starts a node container with the cluster's flags followed
// by extra, and with opts (ports, what to wait for).
func (c *Cluster) runNodeWith(ctx context.Context, id, alias, image string, extra []string, opts ...testcontainers.ContainerCustomizer) (*testcontainers.DockerContainer, error) {
	args := append([]string{"--addr", ":4000", "--node-id", id, "--conformance", "--log-level", c.opts.LogLevel}, c.nodeArgs...)
	args = append(args, c.opts.Args...)
	args = append(args, extra...)
	env := map[string]string{"CHANNELS_API_KEY": APIKey, "CHANNELS_METRICS_PUBLIC": "true"}
	c.redisSec.nodeEnv(env)
	for k, v := range c.opts.Env {
		env[k] = v
	}
	files := c.redisSec.nodeFiles()
	for path, content := range c.opts.Files {
		files = append(files, testcontainers.ContainerFile{Reader: strings.NewReader(content), ContainerFilePath: path, FileMode: 0o444})
	}
	return testcontainers.Run(ctx, image, append([]testcontainers.ContainerCustomizer{
		testcontainers.WithLogger(tclog.TestLogger(c.t)),
		network.WithNetwork([]string{alias}, c.network),
		testcontainers.WithCmd(args...),
		testcontainers.WithEnv(env),
		testcontainers.WithFiles(files...),
	}, opts...)...)
}

// Exited is what RunNodeToExit saw of a node that ended by itself.
type Exited struct {
	ExitCode int
	Took     time.Duration // from the container's start to its exit
	Logs     string
}

// RunNodeToExit starts one more node, id (also its alias), with the
// cluster's flags followed by args (a flag given again wins, such as
// --redis), and waits for it to exit by itself, for at most timeout: a
// node that must refuse to start. It is not one of the cluster's nodes
// (N does not count it); its container goes with the cluster's.
func (c *Cluster) RunNodeToExit(id string, timeout time.Duration, args ...string) Exited {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	began := time.Now()
	ctr, err := c.runNodeWith(ctx, id, id, c.opts.Image, args,
		testcontainers.WithWaitStrategy(wait.ForExit().WithExitTimeout(timeout)))
	c.track(id, ctr)
	if err != nil {
		c.t.Fatalf("harness: %s did not exit within %v: %v", id, timeout, err)
	}
	e := Exited{Took: time.Since(began)}
	in, err := ctr.Inspect(ctx)
	if err != nil {
		c.t.Fatalf("harness: inspecting %s: %v", id, err)
	}
	if in.State != nil {
		e.ExitCode = in.State.ExitCode
		if start, err1 := time.Parse(time.RFC3339Nano, in.State.StartedAt); err1 == nil {
			if end, err2 := time.Parse(time.RFC3339Nano, in.State.FinishedAt); err2 == nil {
				e.Took = end.Sub(start)
			}
		}
	}
	logs, err := containerLogs(ctx, ctr)
	if err != nil {
		c.t.Fatalf("harness: logs of %s: %v", id, err)
	}
	e.Logs = string(logs)
	return e
}

// Replaced is what ReplaceNode saw of the node it replaced.
type Replaced struct {
	ID       string        // the old node's id
	ExitCode int           // 0 for a clean exit; 137 when SIGKILL ended it
	Stopping time.Duration // from SIGTERM to exit
	Logs     string        // its whole log
}

// ReplaceNode does to node i what a rolling update does to a pod: SIGTERM
// (docker stop; SIGKILL if it has not exited after grace), then a new
// container with a new node id (node<i>-<n>) under the same network alias,
// started and ready. The old container stays until the cluster's teardown
// (its log is dumped with the others on failure).
func (c *Cluster) ReplaceNode(i int, grace time.Duration) Replaced {
	c.t.Helper()
	return c.ReplaceNodeWith(i, grace, c.Node(i).Image)
}

// ReplaceNodeWith is ReplaceNode with a new container of image: one step
// of a rolling update from one release to another.
func (c *Cluster) ReplaceNodeWith(i int, grace time.Duration, image string) Replaced {
	c.t.Helper()
	n := c.Node(i)
	ictx, icancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err := c.docker.ImageInspect(ictx, image)
	icancel()
	if err != nil {
		c.t.Fatalf("harness: image %s is not available (%v)", image, err)
	}
	old := n.c
	r := Replaced{ID: n.ID}
	ctx, cancel := context.WithTimeout(context.Background(), grace+c.opts.StartupTimeout+30*time.Second)
	defer cancel()
	began := time.Now()
	if err := old.Stop(ctx, &grace); err != nil {
		c.t.Fatalf("harness: stopping %s: %v", n.ID, err)
	}
	r.Stopping = time.Since(began)
	in, err := old.Inspect(ctx)
	if err != nil {
		c.t.Fatalf("harness: inspecting %s: %v", n.ID, err)
	}
	if in.State != nil {
		r.ExitCode = in.State.ExitCode
	}
	logs, err := containerLogs(ctx, old)
	if err != nil {
		c.t.Fatalf("harness: logs of %s: %v", n.ID, err)
	}
	r.Logs = string(logs)
	// The old container leaves the network, so that its alias names only
	// the new one.
	if _, err := c.docker.NetworkDisconnect(ctx, c.network.ID, client.NetworkDisconnectOptions{Container: old.GetContainerID(), Force: true}); err != nil {
		c.t.Fatalf("harness: detaching %s from the network: %v", n.ID, err)
	}
	c.generation[i]++
	id := fmt.Sprintf("%s-%d", n.Alias, c.generation[i]+1)
	ctr, err := c.runNode(ctx, id, n.Alias, image)
	c.track(id, ctr)
	if err != nil {
		c.t.Fatalf("harness: starting %s (%s) in place of %s: %v", id, image, n.ID, err)
	}
	n.mu.Lock()
	n.ID, n.c, n.Image = id, ctr, image
	n.mu.Unlock()
	if err := c.refreshAddr(ctx, n); err != nil {
		c.t.Fatalf("harness: %s: %v", id, err)
	}
	return r
}

// describe lists the nodes' addresses and, when readable from this host,
// their open-files limit.

// Kill sends SIGKILL to node i's process (docker kill) and returns once
// the container has stopped.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	n := c.Node(i)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Ask for the exit before killing, so that it cannot be missed.
	w := c.docker.ContainerWait(ctx, n.ContainerID(), client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := c.docker.ContainerKill(ctx, n.ContainerID(), client.ContainerKillOptions{Signal: "SIGKILL"}); err != nil {
		c.t.Fatalf("harness: killing %s: %v", n.ID, err)
	}
	select {
	case <-w.Result:
	case err := <-w.Error:
		c.t.Fatalf("harness: waiting for %s to exit: %v", n.ID, err)
	}
}

// Running reports whether node i's container is running (false once
// Kill or Stop has ended it).
func (c *Cluster) Running(i int) bool {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Node(i).c.State(ctx)
	if err != nil {
		c.t.Fatalf("harness: state of node %d: %v", i, err)
	}
	return st.Running
}

// Stop stops node i gracefully (SIGTERM, then SIGKILL after timeout).
func (c *Cluster) Stop(i int, timeout time.Duration) {
	c.t.Helper()
	n := c.Node(i)
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	if err := n.c.Stop(ctx, &timeout); err != nil {
		c.t.Fatalf("harness: stopping %s: %v", n.ID, err)
	}
}

// StartNode starts a stopped or killed node i again and waits for its
// /readyz; its published port, and so Addr, changes. It is the same
// container, so it keeps its network alias (node<i>) on the cluster's
// network, though maybe not its address there: whatever finds it by name,
// like the other nodes or a LoadBalancer, finds it again. Kill or Stop
// followed by StartNode is how a test replaces a node behind a load
// balancer.
func (c *Cluster) StartNode(i int) {
	c.t.Helper()
	n := c.Node(i)
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.StartupTimeout+10*time.Second)
	defer cancel()
	if err := startPublished(ctx, n.c); err != nil {
		c.t.Fatalf("harness: starting %s again: %v", n.ID, err)
	}
	if err := c.refreshAddr(ctx, n); err != nil {
		c.t.Fatalf("harness: %s: %v", n.ID, err)
	}
}

// Logs returns node i's log so far.
func (c *Cluster) Logs(i int) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := containerLogs(ctx, c.Node(i).c)
	if err != nil {
		c.t.Fatalf("harness: logs of node %d: %v", i, err)
	}
	return string(data)
}

// NodeOpenFilesLimit reads the "Max open files" line of the limits of node
// i's process, soft and hard as "soft/hard", from /proc on this host. It
// works when the Docker engine runs on this host, in its PID namespace.
func (c *Cluster) NodeOpenFilesLimit(i int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := c.Node(i).c.Inspect(ctx)
	if err != nil {
		return "", err
	}
	if in.State == nil || in.State.Pid == 0 {
		return "", errors.New("the node is not running")
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/limits", in.State.Pid))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Max open files"); ok {
			fs := strings.Fields(rest)
			if len(fs) >= 2 {
				return fs[0] + "/" + fs[1], nil
			}
		}
	}
	return "", errors.New("no open-files line in /proc/<pid>/limits")
}

// Disconnect detaches node i's container from the cluster's network (the
// Docker API's network disconnect), cutting it off from Redis and the
// other nodes while it keeps running. The port published through that
// network goes with it, and so do the sockets opened there; sockets opened
// through AttachSideNetwork stay.
func (c *Cluster) Disconnect(i int) {
	c.t.Helper()
	n := c.Node(i)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.docker.NetworkDisconnect(ctx, c.network.ID, client.NetworkDisconnectOptions{Container: n.ContainerID(), Force: true}); err != nil {
		c.t.Fatalf("harness: disconnecting %s from network %s: %v", n.ID, c.network.Name, err)
	}
}

// Reconnect attaches node i's container to the cluster's network again,
// under its alias (node<i>), possibly with a new address; Addr is
// refreshed.
func (c *Cluster) Reconnect(i int) {
	c.t.Helper()
	n := c.Node(i)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ep := &dnetwork.EndpointSettings{Aliases: []string{n.Alias}}
	if _, err := c.docker.NetworkConnect(ctx, c.network.ID, client.NetworkConnectOptions{Container: n.ContainerID(), EndpointConfig: ep}); err != nil {
		c.t.Fatalf("harness: reconnecting %s to network %s: %v", n.ID, c.network.Name, err)
	}
	if err := c.refreshAddr(ctx, n); err != nil {
		c.t.Fatalf("harness: %s: %v", n.ID, err)
	}
}

// AttachSideNetwork connects node i to a new network of its own (removed
// in t.Cleanup) and returns the node's WebSocket URL on it,
// ws://<address on that network>:4000/socket/websocket, which this host
// reaches directly through the network's bridge. Sockets opened there
// survive Disconnect, which only detaches the node from the cluster's
// network (Redis and the other nodes).
func (c *Cluster) AttachSideNetwork(i int) string {
	c.t.Helper()
	n := c.Node(i)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	side, err := network.New(ctx)
	if err != nil {
		c.t.Fatalf("harness: creating a side network for %s: %v", n.ID, err)
	}
	docker := c.docker
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = docker.NetworkDisconnect(ctx, side.ID, client.NetworkDisconnectOptions{Container: n.ContainerID(), Force: true})
		// The engine may publish the node's port anew on a network
		// change, on another host port: Addr follows, as after the
		// connect below, or later subtests dial a port nothing serves.
		if err := c.refreshAddr(ctx, n); err != nil {
			c.t.Logf("harness: %s: address not refreshed: %v", n.ID, err)
		}
		if err := side.Remove(ctx); err != nil {
			c.t.Errorf("harness: removing side network %s: %v", side.Name, err)
		}
	})
	if _, err := docker.NetworkConnect(ctx, side.ID, client.NetworkConnectOptions{Container: n.ContainerID()}); err != nil {
		c.t.Fatalf("harness: connecting %s to side network %s: %v", n.ID, side.Name, err)
	}
	in, err := n.c.Inspect(ctx)
	if err != nil {
		c.t.Fatalf("harness: inspecting %s: %v", n.ID, err)
	}
	var ep *dnetwork.EndpointSettings
	if in.NetworkSettings != nil {
		ep = in.NetworkSettings.Networks[side.Name]
	}
	if ep == nil || !ep.IPAddress.IsValid() {
		c.t.Fatalf("harness: %s has no address on side network %s", n.ID, side.Name)
	}
	if err := c.refreshAddr(ctx, n); err != nil {
		c.t.Fatalf("harness: %s: %v", n.ID, err)
	}
	return "ws://" + net.JoinHostPort(ep.IPAddress.String(), "4000") + "/socket/websocket"
}
