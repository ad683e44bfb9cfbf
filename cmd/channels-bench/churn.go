package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws/wsutil"
)

type churnResult struct {
	Scenario        string  `json:"scenario"`
	Rate            float64 `json:"rate"`
	Seconds         float64 `json:"seconds"`
	Cycles          int64   `json:"cycles"`
	Failed          int64   `json:"failed"`
	HeapBefore      int64   `json:"heap_inuse_before"`
	HeapAfter       int64   `json:"heap_inuse_after"`
	GoroutinesStart int64   `json:"goroutines_before"`
	GoroutinesEnd   int64   `json:"goroutines_after"`
	SocketsEnd      int64   `json:"sockets_after"`
	ChannelsEnd     int64   `json:"channels_after"`
	PresenceEnd     int64   `json:"presence_entries_after"`
	RSSBefore       int64   `json:"server_rss_before"`
	RSSAfter        int64   `json:"server_rss_after"`
	ServerCPU       float64 `json:"server_cpu_seconds"`
	ClientCPU       float64 `json:"client_cpu_seconds"`
}

// runChurn: sockets connect, join a room (tracking presence), push a
// message, leave and disconnect, at a fixed rate for a duration, while
// others stay a while. Afterwards, once the last socket has gone, the
// node's heap (after a forced GC, through its pprof listener), goroutines,
// sockets, channels and presence entries must be back at their starting
// level: anything left is a leak.
func runChurn(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("churn", flag.ContinueOnError)
	var tf targetFlags
	tf.register(fs)
	rate := fs.Float64("rate", 200, "socket lifecycles started per second")
	duration := fs.Duration("duration", 20*time.Second, "how long to churn")
	hold := fs.Duration("hold", 2*time.Second, "how long each socket stays joined")
	rooms := fs.Int("rooms", 20, "rooms the sockets spread over")
	sources := fs.Int("sources", 4, "local source addresses 127.0.0.1..N")
	pprofAddr := fs.String("pprof", "", "the node's --pprof-addr (loopback), to force a GC before reading the heap; with -spawn-node one is chosen")
	settle := fs.Duration("settle", 3*time.Second, "wait after the last socket closed before the final reading")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *rate <= 0 || *duration <= 0 {
		return fmt.Errorf("-rate and -duration must be positive")
	}
	if tf.spawn && *pprofAddr == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		*pprofAddr = ln.Addr().String()
		ln.Close()
		tf.nodeFlags += " --pprof-addr=" + *pprofAddr
	}
	if *pprofAddr != "" {
		if err := checkLoopback(*pprofAddr); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *duration+*hold+*settle+time.Minute)
	defer cancel()
	t, err := tf.open(ctx)
	if err != nil {
		return err
	}
	defer t.close()

	res := churnResult{Scenario: "churn", Rate: *rate}
	before, err := nodeMetrics(ctx, t.addr, *pprofAddr)
	if err != nil {
		return err
	}
	res.HeapBefore, res.GoroutinesStart = int64(before["go_memstats_heap_inuse_bytes"]), int64(before["go_goroutines"])
	res.RSSBefore, _ = rssBytes(t.pid)
	cpu0, _ := cpuSeconds(t.pid)
	self0, _ := cpuSeconds(0)

	var cycles, failed atomic.Int64
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / *rate)
	start := time.Now()
	tick := time.NewTicker(interval)
	progress := time.NewTicker(5 * time.Second)
	i := 0
loop:
	for time.Since(start) < *duration {
		select {
		case <-ctx.Done():
			break loop
		case <-progress.C:
			fmt.Fprintf(os.Stderr, "churn: %d cycles, %d failed\n", cycles.Load(), failed.Load())
		case <-tick.C:
		}
		i++
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := churnOne(ctx, t.addr, net.IPv4(127, 0, 0, byte(1+i%*sources)), "room:churn-"+strconv.Itoa(i%*rooms), "c"+strconv.Itoa(i), *hold); err != nil {
				failed.Add(1)
				return
			}
			cycles.Add(1)
		}(i)
	}
	tick.Stop()
	progress.Stop()
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.Cycles, res.Failed = cycles.Load(), failed.Load()

	// The node ends sockets asynchronously: wait for the gauge to read 0,
	// then let it settle.
	var after map[string]float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		after, err = nodeMetrics(ctx, t.addr, "")
		if err != nil {
			return err
		}
		if after[`channelsd_sockets{transport="websocket"}`] == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the node's gauge
	}
	select {
	case <-time.After(*settle):
	case <-ctx.Done():
	}
	if after, err = nodeMetrics(ctx, t.addr, *pprofAddr); err != nil {
		return err
	}
	res.HeapAfter, res.GoroutinesEnd = int64(after["go_memstats_heap_inuse_bytes"]), int64(after["go_goroutines"])
	res.SocketsEnd = int64(after[`channelsd_sockets{transport="websocket"}`])
	res.ChannelsEnd = int64(after["channelsd_channels"])
	res.PresenceEnd = int64(after["channelsd_presence_entries"])
	res.RSSAfter, _ = rssBytes(t.pid)
	cpu1, _ := cpuSeconds(t.pid)
	self1, _ := cpuSeconds(0)
	res.ServerCPU, res.ClientCPU = cpu1-cpu0, self1-self0

	fmt.Printf("scenario            churn\n")
	fmt.Printf("cycles              %d in %.1f s (%.0f/s asked, %d failed), each joined for %s\n", res.Cycles, res.Seconds, *rate, res.Failed, *hold)
	fmt.Printf("node heap in use    %.1f MiB before, %.1f MiB after (after a GC: %v)\n", mib(res.HeapBefore), mib(res.HeapAfter), *pprofAddr != "")
	fmt.Printf("goroutines          %d before, %d after\n", res.GoroutinesStart, res.GoroutinesEnd)
	fmt.Printf("left over           %d sockets, %d channels, %d presence entries\n", res.SocketsEnd, res.ChannelsEnd, res.PresenceEnd)
	fmt.Printf("cpu                 server %.2f s, this client %.2f s\n", res.ServerCPU, res.ClientCPU)
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	if res.SocketsEnd != 0 || res.ChannelsEnd != 0 || res.PresenceEnd != 0 || res.GoroutinesEnd > res.GoroutinesStart+2 {
		return fmt.Errorf("churn left state behind: %d sockets, %d channels, %d presence entries, goroutines %d → %d",
			res.SocketsEnd, res.ChannelsEnd, res.PresenceEnd, res.GoroutinesStart, res.GoroutinesEnd)
	}
	return nil
}

// churnOne is one socket's life: connect, join a room as a user (the
// default app tracks presence and pushes presence_state), send a message,
// stay, leave, disconnect.
func churnOne(ctx context.Context, addr string, src net.IP, topic, user string, hold time.Duration) error {
	conn, err := dialV2(ctx, addr, src, "&user="+user)
	if err != nil {
		return err
	}
	defer conn.Close()
	jr, err := joinTopicRef(conn, topic, fmt.Sprintf(`{"user":%q}`, user))
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, _, err := wsutil.ReadServerData(conn); err != nil {
				return
			}
		}
	}()
	ref := strconv.FormatInt(joinRefs.Add(1), 10)
	if err := wsutil.WriteClientText(conn, []byte(fmt.Sprintf(`[%q,%q,%q,"new_msg",{"body":"hi"}]`, jr, ref, topic))); err != nil {
		return err
	}
	select {
	case <-time.After(hold):
	case <-ctx.Done():
	}
	ref = strconv.FormatInt(joinRefs.Add(1), 10)
	_ = wsutil.WriteClientText(conn, []byte(fmt.Sprintf(`[%q,%q,%q,"phx_leave",{}]`, jr, ref, topic)))
	conn.Close()
	<-done
	return nil
}

// nodeMetrics reads the node's /metrics as name{labels} → value. With a
// pprof address it first asks for a heap profile with gc=1, which runs a
// garbage collection, so the heap figures are live data only.
func nodeMetrics(ctx context.Context, addr, pprofAddr string) (map[string]float64, error) {
	// No keep-alive: an idle kept-alive connection is a goroutine in the
	// node, and how many of them were alive at each reading made the
	// goroutine count differ by one or two between readings that should
	// be equal.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if pprofAddr != "" {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+pprofAddr+"/debug/pprof/heap?gc=1", nil)
		if res, err := client.Do(req); err == nil {
			res.Body.Close()
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	res, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: HTTP %d (an API key set? churn needs /metrics open)", res.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}
