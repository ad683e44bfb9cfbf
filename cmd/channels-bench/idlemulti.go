package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// The idle scenario over several nodes and several client processes. A
// process may hold at most 20,000 open files here, so 45,000 sockets need
// at least three: the parent starts -procs children of this binary
// (`idle -child`), each opening its share of the sockets (socket i goes to
// node i mod nodes) and reporting once joined; the parent then reads each
// node's RSS and socket count, and tells the children to close by closing
// their stdin.

type childReport struct {
	Joined  int64   `json:"joined"`
	Failed  int64   `json:"failed"`
	Seconds float64 `json:"seconds"`
	CPU     float64 `json:"cpu"`
}

type idleNode struct {
	Addr           string  `json:"addr"`
	Pid            int     `json:"pid"`
	Sockets        int64   `json:"sockets"`
	RSSBefore      int64   `json:"rss_before"`
	RSSAfter       int64   `json:"rss_after"`
	BytesPerSocket float64 `json:"bytes_per_socket"`
}

type idleClusterResult struct {
	Scenario        string     `json:"scenario"`
	Conns           int        `json:"conns"`
	Joined          int64      `json:"joined"`
	Failed          int64      `json:"failed"`
	ConnectSeconds  float64    `json:"connect_seconds"`
	JoinsPerSecond  float64    `json:"joins_per_second"`
	Nodes           []idleNode `json:"nodes"`
	ClientProcesses int        `json:"client_processes"`
	ClientCPU       float64    `json:"client_cpu_seconds"`
}

// idleChild opens its sockets, reports, and holds them until stdin closes.
func idleChild(ctx context.Context, addrs []string, offset, n, parallel, sources int, topic func(i int) string) error {
	self0, _ := cpuSeconds(0)
	start := time.Now()
	d := idleDrainer()
	conns, failed := openMany(ctx, "idle child", n, parallel, sources, func(i int, src net.IP) (net.Conn, error) {
		j := offset + i
		return dialJoin(ctx, d, addrs[j%len(addrs)], src, topic(j), j)
	})
	self1, _ := cpuSeconds(0)
	line, _ := json.Marshal(childReport{Joined: int64(len(conns)), Failed: failed, Seconds: time.Since(start).Seconds(), CPU: self1 - self0})
	fmt.Println(string(line))
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it
	for _, c := range conns {
		c.Close()
	}
	if d != nil {
		d.close()
	}
	return nil
}

// idleParent spreads conns over procs children and reads the nodes.
func idleParent(ctx context.Context, addrs []string, pids []int, conns, procs int, childArgs []string, settle time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	res := idleClusterResult{Scenario: "idle", Conns: conns, ClientProcesses: procs}
	for i, a := range addrs {
		nd := idleNode{Addr: a}
		if i < len(pids) {
			nd.Pid = pids[i]
			nd.RSSBefore, _ = rssBytes(nd.Pid)
		}
		res.Nodes = append(res.Nodes, nd)
	}
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   *bufio.Reader
	}
	var children []child
	defer func() {
		for _, c := range children {
			c.stdin.Close()
			_ = c.cmd.Wait()
		}
	}()
	start := time.Now()
	share := (conns + procs - 1) / procs
	for p := 0; p < procs; p++ {
		n := min(share, conns-p*share)
		if n <= 0 {
			break
		}
		args := append([]string{"idle", "-child", "-addrs", strings.Join(addrs, ","), "-offset", strconv.Itoa(p * share), "-conns", strconv.Itoa(n)}, childArgs...)
		cmd := exec.CommandContext(ctx, self, args...)
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		children = append(children, child{cmd, in, bufio.NewReader(out)})
	}
	for _, c := range children {
		line, err := c.out.ReadString('\n')
		if err != nil {
			return fmt.Errorf("a client process ended before reporting: %w", err)
		}
		var r childReport
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("client process report %q: %w", line, err)
		}
		res.Joined += r.Joined
		res.Failed += r.Failed
		res.ClientCPU += r.CPU
	}
	res.ConnectSeconds = time.Since(start).Seconds()
	res.JoinsPerSecond = float64(res.Joined) / res.ConnectSeconds
	select {
	case <-time.After(settle):
	case <-ctx.Done():
	}
	for i := range res.Nodes {
		nd := &res.Nodes[i]
		if m, err := nodeMetrics(ctx, nd.Addr, ""); err == nil {
			nd.Sockets = int64(m[`channelsd_sockets{transport="websocket"}`])
		}
		if nd.Pid != 0 {
			nd.RSSAfter, _ = rssBytes(nd.Pid)
			if nd.Sockets > 0 {
				nd.BytesPerSocket = float64(nd.RSSAfter-nd.RSSBefore) / float64(nd.Sockets)
			}
		}
	}
	fmt.Printf("scenario            idle, %d nodes, %d client processes\n", len(addrs), procs)
	fmt.Printf("sockets joined      %d of %d (%d failed)\n", res.Joined, conns, res.Failed)
	fmt.Printf("connect+join        %.2f s, %.0f joins/s (client CPU %.2f s)\n", res.ConnectSeconds, res.JoinsPerSecond, res.ClientCPU)
	for _, nd := range res.Nodes {
		fmt.Printf("node %-15s %d sockets, RSS %.1f → %.1f MiB, %.0f bytes (%.2f KiB) per idle socket\n",
			nd.Addr, nd.Sockets, mib(nd.RSSBefore), mib(nd.RSSAfter), nd.BytesPerSocket, nd.BytesPerSocket/1024)
	}
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	return nil
}
