package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/channelsd/channelsd/transport/wsclient"
)

type presenceResult struct {
	Scenario        string  `json:"scenario"`
	Nodes           int     `json:"nodes"`
	Users           int     `json:"users"`
	Tracked         int64   `json:"tracked"`
	Failed          int64   `json:"failed"`
	StormSeconds    float64 `json:"storm_seconds"`    // first track sent → last track acknowledged
	ConvergeSeconds float64 `json:"converge_seconds"` // last track acknowledged → every observer lists every user
	TotalSeconds    float64 `json:"total_seconds"`    // first track sent → converged
	Converged       bool    `json:"converged"`
	ServerCPU       float64 `json:"server_cpu_seconds"`
	ClientCPU       float64 `json:"client_cpu_seconds"`
}

// runPresence: a join storm on one topic across the nodes. Each user
// opens a socket on node i mod nodes, joins the topic and tracks itself
// (the conformance channel's "track": no presence_state pushed to it, so
// the measure is the cluster's, not the client's decoding of N states).
// One observer per node, joined before the storm, merges presence_state
// and every presence_diff as the JavaScript Presence class does; the
// storm has converged when every observer lists every user.
func runPresence(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("presence", flag.ContinueOnError)
	addrs := fs.String("addrs", "127.0.0.1:4000", "comma-separated node addresses (loopback only), started with --conformance")
	pids := fs.String("pids", "", "comma-separated node pids, for server CPU readings")
	users := fs.Int("users", 1000, "users joining the topic (at most 19,000 per process)")
	parallel := fs.Int("parallel", 64, "concurrent joins")
	sources := fs.Int("sources", 4, "local source addresses 127.0.0.1..N")
	timeout := fs.Duration("timeout", 3*time.Minute, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *users <= 0 || *users > 19000 {
		return fmt.Errorf("-users must be 1..19000")
	}
	nodes := strings.Split(*addrs, ",")
	for _, a := range nodes {
		if err := checkLoopback(a); err != nil {
			return err
		}
	}
	var nodePids []int
	for _, p := range strings.Split(*pids, ",") {
		if n, err := strconv.Atoi(p); err == nil {
			nodePids = append(nodePids, n)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	topic := fmt.Sprintf("conformance:presence-%d", time.Now().UnixNano())

	// Observers, one per node.
	obs := make([]*observer, len(nodes))
	for i, a := range nodes {
		c, err := wsclient.Dial(ctx, "ws://"+a+"/socket/websocket", wsclient.Options{Buffer: 1 << 16})
		if err != nil {
			return fmt.Errorf("observer on %s: %w", a, err)
		}
		defer c.Close()
		o := &observer{keys: map[string]map[string]bool{}}
		obs[i] = o
		if r, err := c.Join(ctx, topic, map[string]string{"user": "observer-" + strconv.Itoa(i)}); err != nil || r.Status != "ok" {
			return fmt.Errorf("observer join on %s: %v %v", a, r, err)
		}
		go o.run(ctx, c, topic)
	}
	want := *users + len(nodes) // the observers track themselves too

	res := presenceResult{Scenario: "presence", Nodes: len(nodes), Users: *users}
	cpu0 := sumCPU(nodePids)
	self0, _ := cpuSeconds(0)
	start := time.Now()
	d := idleDrainer()
	conns, failed := openMany(ctx, "presence", *users, *parallel, *sources, func(i int, src net.IP) (net.Conn, error) {
		return trackOne(ctx, d, nodes[i%len(nodes)], src, topic, "u"+strconv.Itoa(i))
	})
	stormEnd := time.Now()
	res.Tracked, res.Failed = int64(len(conns)), failed
	res.StormSeconds = stormEnd.Sub(start).Seconds()
	want = int(res.Tracked) + len(nodes)
	for ctx.Err() == nil {
		done := true
		for _, o := range obs {
			if o.count() < want {
				done = false
			}
		}
		if done {
			res.Converged = true
			break
		}
		time.Sleep(2 * time.Millisecond) // polling counters the observers' goroutines update
	}
	end := time.Now()
	res.ConvergeSeconds = end.Sub(stormEnd).Seconds()
	res.TotalSeconds = end.Sub(start).Seconds()
	res.ServerCPU = sumCPU(nodePids) - cpu0
	self1, _ := cpuSeconds(0)
	res.ClientCPU = self1 - self0
	for _, c := range conns {
		c.Close()
	}
	if d != nil {
		d.close()
	}

	fmt.Printf("scenario            presence\n")
	fmt.Printf("users tracked       %d of %d over %d nodes (%d failed)\n", res.Tracked, res.Users, res.Nodes, res.Failed)
	fmt.Printf("join storm          %.2f s (first track to last acknowledged)\n", res.StormSeconds)
	if res.Converged {
		fmt.Printf("converged           %.3f s after the last track (%.2f s after the first): every node's observer lists all %d\n", res.ConvergeSeconds, res.TotalSeconds, want)
	} else {
		fmt.Printf("NOT converged       within the timeout\n")
	}
	fmt.Printf("cpu                 servers %.2f s, this client %.2f s\n", res.ServerCPU, res.ClientCPU)
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	return nil
}

// trackOne opens a socket on addr, joins topic without a user (so the
// channel pushes no presence_state) and tracks key; the socket's frames
// (the topic's diffs) are read and dropped until it closes.
func trackOne(ctx context.Context, d *drainer, addr string, src net.IP, topic, key string) (net.Conn, error) {
	conn, err := dialV2(ctx, addr, src, "")
	if err != nil {
		return nil, err
	}
	jr, err := joinTopicRef(conn, topic, "{}")
	if err != nil {
		conn.Close()
		return nil, err
	}
	ref := strconv.FormatInt(joinRefs.Add(1), 10)
	frame := fmt.Sprintf(`[%q,%q,%q,"track",{"key":%q,"meta":{}}]`, jr, ref, topic, key)
	if err := wsutil.WriteClientText(conn, []byte(frame)); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	prefix := []byte(fmt.Sprintf(`[%q,%q,`, jr, ref))
	for {
		data, err := wsutil.ReadServerText(conn)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("awaiting the track reply: %w", err)
		}
		if len(data) >= len(prefix) && string(data[:len(prefix)]) == string(prefix) {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	if err := drain(d, conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// observer merges a topic's presence_state and presence_diffs, key by
// key, as the JavaScript Presence class does (PROTOCOL.md §7.4).
type observer struct {
	mu   sync.Mutex
	keys map[string]map[string]bool // key -> phx_refs
}

type presenceMetas map[string]struct {
	Metas []struct {
		Ref string `json:"phx_ref"`
	} `json:"metas"`
}

func (o *observer) run(ctx context.Context, c *wsclient.Client, topic string) {
	for {
		m, err := c.Next(ctx)
		if err != nil {
			return
		}
		if m.Topic != topic {
			continue
		}
		switch m.Event {
		case "presence_state":
			var st presenceMetas
			if json.Unmarshal(m.Payload, &st) == nil {
				o.apply(st, nil, true)
			}
		case "presence_diff":
			var d struct {
				Joins  presenceMetas `json:"joins"`
				Leaves presenceMetas `json:"leaves"`
			}
			if json.Unmarshal(m.Payload, &d) == nil {
				o.apply(d.Joins, d.Leaves, false)
			}
		}
	}
}

func (o *observer) apply(joins, leaves presenceMetas, state bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if state {
		clear(o.keys)
	}
	for k, e := range joins {
		refs := o.keys[k]
		if refs == nil {
			refs = map[string]bool{}
			o.keys[k] = refs
		}
		for _, m := range e.Metas {
			refs[m.Ref] = true
		}
	}
	for k, e := range leaves {
		for _, m := range e.Metas {
			delete(o.keys[k], m.Ref)
		}
		if len(o.keys[k]) == 0 {
			delete(o.keys, k)
		}
	}
}

func (o *observer) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.keys)
}
