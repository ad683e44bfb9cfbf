package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws/wsutil"
)

type idleResult struct {
	Scenario       string  `json:"scenario"`
	Conns          int     `json:"conns"`
	Joined         int64   `json:"joined"`
	Failed         int64   `json:"failed"`
	Rooms          int     `json:"rooms"`
	ConnectSeconds float64 `json:"connect_seconds"`
	JoinsPerSecond float64 `json:"joins_per_second"`
	RSSBefore      int64   `json:"server_rss_before"`
	RSSAfter       int64   `json:"server_rss_after"`
	BytesPerSocket float64 `json:"server_bytes_per_socket"`
	ServerCPU      float64 `json:"server_cpu_seconds"`
	ClientCPU      float64 `json:"client_cpu_seconds"`
	SettleSeconds  float64 `json:"settle_seconds"`
	// FramesOut is what the node wrote to clients from its start to the
	// reading (channelsd_messages_out_total): join replies, presence
	// states and every presence_diff delivered.
	FramesOut       float64 `json:"server_frames_out"`
	NodeGoroutines  int     `json:"-"`
	ClientProcesses int     `json:"client_processes"`
}

func runIdle(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	var tf targetFlags
	tf.register(fs)
	conns := fs.Int("conns", 10000, "sockets to open and join (at most 19,000 per process: the open-file limit here is 20,000)")
	rooms := fs.Int("rooms", 100, "rooms the sockets spread over (room:bench-<i mod rooms>)")
	sources := fs.Int("sources", 4, "local source addresses 127.0.0.1..N, to spread ephemeral ports")
	parallel := fs.Int("parallel", 64, "concurrent connects")
	settle := fs.Duration("settle", 5*time.Second, "wait after the last join before reading memory")
	plain := fs.Bool("plain", false, "join conformance:bench-<i> topics without presence (needs a node with --conformance) instead of the default app's rooms, which track presence and push presence_state on every join")
	timeout := fs.Duration("timeout", 3*time.Minute, "bound on the whole run")
	addrs := fs.String("addrs", "", "comma-separated node addresses (loopback only), instead of -addr: socket i goes to node i mod nodes")
	pids := fs.String("pids", "", "with -addrs: the nodes' pids, in the same order, for their memory")
	procs := fs.Int("procs", 1, "client processes to spread the sockets over (each holds at most 19,000); with -addrs or -procs above 1 the sockets are opened by child processes")
	child := fs.Bool("child", false, "internal: run as one of -procs's client processes")
	offset := fs.Int("offset", 0, "internal: the child's first socket index")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	topicPrefix := "room:bench-"
	if *plain {
		topicPrefix = "conformance:bench-"
		if !strings.Contains(tf.nodeFlags, "--conformance") {
			tf.nodeFlags += " --conformance"
		}
	}
	topic := func(i int) string { return topicPrefix + strconv.Itoa(i%*rooms) }
	if *child || *addrs != "" || *procs > 1 {
		list := strings.Split(*addrs, ",")
		if *addrs == "" {
			list = []string{tf.addr}
		}
		for _, a := range list {
			if err := checkLoopback(a); err != nil {
				return err
			}
		}
		if *child {
			return idleChild(ctx, list, *offset, *conns, *parallel, *sources, topic)
		}
		if *procs < 1 || (*conns+*procs-1) / *procs > 19000 {
			return fmt.Errorf("-procs %d: at most 19,000 sockets per process", *procs)
		}
		var pidList []int
		for _, p := range strings.Split(*pids, ",") {
			if n, err := strconv.Atoi(p); err == nil {
				pidList = append(pidList, n)
			} else if *addrs == "" && tf.pid != 0 {
				pidList = []int{tf.pid}
			}
		}
		childArgs := []string{"-rooms", strconv.Itoa(*rooms), "-sources", strconv.Itoa(*sources), "-parallel", strconv.Itoa(*parallel)}
		if *plain {
			childArgs = append(childArgs, "-plain")
		}
		return idleParent(ctx, list, pidList, *conns, *procs, childArgs, *settle)
	}
	if *conns <= 0 || *conns > 19000 {
		return fmt.Errorf("-conns must be 1..19000 in one process (use -procs)")
	}
	t, err := tf.open(ctx)
	if err != nil {
		return err
	}
	defer t.close()

	res := idleResult{Scenario: "idle", Conns: *conns, Rooms: *rooms, ClientProcesses: 1, SettleSeconds: settle.Seconds()}
	res.RSSBefore, _ = rssBytes(t.pid)
	cpu0, _ := cpuSeconds(t.pid)
	self0, _ := cpuSeconds(0)

	start := time.Now()
	d := idleDrainer()
	opened, failed := openMany(ctx, "idle", *conns, *parallel, *sources, func(i int, src net.IP) (net.Conn, error) {
		return dialJoin(ctx, d, t.addr, src, topic(i), i)
	})
	res.ConnectSeconds = time.Since(start).Seconds()
	res.Joined, res.Failed = int64(len(opened)), failed
	res.JoinsPerSecond = float64(res.Joined) / res.ConnectSeconds

	select {
	case <-time.After(*settle):
	case <-ctx.Done():
	}
	res.RSSAfter, _ = rssBytes(t.pid)
	cpu1, _ := cpuSeconds(t.pid)
	self1, _ := cpuSeconds(0)
	res.ServerCPU, res.ClientCPU = cpu1-cpu0, self1-self0
	if m, err := nodeMetrics(ctx, t.addr, ""); err == nil {
		res.FramesOut = m["channelsd_messages_out_total"]
	}
	if res.Joined > 0 && res.RSSAfter > 0 {
		res.BytesPerSocket = float64(res.RSSAfter-res.RSSBefore) / float64(res.Joined)
	}
	for _, c := range opened {
		c.Close()
	}
	if d != nil {
		d.close()
	}

	fmt.Printf("scenario            idle\n")
	fmt.Printf("sockets joined      %d of %d (%d failed), %d rooms\n", res.Joined, res.Conns, res.Failed, res.Rooms)
	fmt.Printf("connect+join        %.2f s, %.0f joins/s\n", res.ConnectSeconds, res.JoinsPerSecond)
	fmt.Printf("server RSS          %.1f MiB before, %.1f MiB after (settled %s)\n", mib(res.RSSBefore), mib(res.RSSAfter), *settle)
	fmt.Printf("per idle socket     %.0f bytes (%.2f KiB)\n", res.BytesPerSocket, res.BytesPerSocket/1024)
	fmt.Printf("cpu                 server %.2f s, this client %.2f s\n", res.ServerCPU, res.ClientCPU)
	fmt.Printf("frames out          %.0f (%.1f per join)\n", res.FramesOut, res.FramesOut/float64(max(res.Joined, 1)))
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	runtime.KeepAlive(opened)
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// dialJoin opens one V2 socket from src, joins topic as a user and hands
// it to d, or without d to a goroutine of its own, to drain whatever the
// server sends (presence diffs) until the connection closes.
func dialJoin(ctx context.Context, d *drainer, addr string, src net.IP, topic string, i int) (net.Conn, error) {
	user := "u" + strconv.Itoa(i)
	conn, err := dialV2(ctx, addr, src, "&user="+user)
	if err != nil {
		return nil, err
	}
	params := fmt.Sprintf(`{"user":%q}`, user)
	if strings.HasPrefix(topic, "conformance:") {
		params = "{}" // no user: the conformance channel tracks nobody
	}
	if err := joinTopic(conn, topic, params); err != nil {
		conn.Close()
		return nil, err
	}
	if err := drain(d, conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// drain reads and discards what the server sends on conn until it closes:
// through d, or without d from a goroutine of conn's own.
func drain(d *drainer, conn net.Conn) error {
	if d != nil {
		return d.add(conn)
	}
	go func() {
		for {
			if _, _, err := wsutil.ReadServerData(conn); err != nil {
				return
			}
		}
	}()
	return nil
}

// idleDrainer starts a drainer with a thread per core, or returns nil
// where there is none (the sockets then drain from goroutines).
func idleDrainer() *drainer {
	d, err := newDrainer(runtime.NumCPU())
	if err != nil {
		return nil
	}
	return d
}
