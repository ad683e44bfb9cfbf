package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

type longpollResult struct {
	Scenario string `json:"scenario"`
	// One session, server to client: broadcasts from a WebSocket
	// publisher on the session's topic, at most Inflight not yet received.
	DownMessages  int     `json:"down_messages"`
	DownReceived  int     `json:"down_received"`
	DownLost      int     `json:"down_lost"`
	DownDups      int     `json:"down_duplicates"`
	DownReordered int     `json:"down_reordered"`
	DownPerSecond float64 `json:"down_per_second"`
	DownP50ms     float64 `json:"down_latency_p50_ms"`
	DownP99ms     float64 `json:"down_latency_p99_ms"`
	DownPolls     int     `json:"down_polls"`
	Inflight      int     `json:"inflight"`
	// One session, client to server: pushes answered by replies.
	UpMessages  int     `json:"up_messages"`
	UpPerSecond float64 `json:"up_per_second"`
	UpPosts     int     `json:"up_posts"`
	// Idle sessions, each joined to a room and polling.
	Sessions        int     `json:"sessions"`
	SessionsOpen    int64   `json:"sessions_open"`
	OpenSeconds     float64 `json:"open_seconds"`
	RSSBefore       int64   `json:"server_rss_before"`
	RSSAfter        int64   `json:"server_rss_after"`
	BytesPerSession float64 `json:"server_bytes_per_session"`
	ServerCPU       float64 `json:"server_cpu_seconds"`
	ClientCPU       float64 `json:"client_cpu_seconds"`
}

func runLongPoll(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("longpoll", flag.ContinueOnError)
	var tf targetFlags
	tf.register(fs)
	messages := fs.Int("messages", 20000, "messages each way through one session")
	inflight := fs.Int("inflight", 500, "broadcasts published and not yet received, at most (below the session buffer of 1,000)")
	sessions := fs.Int("sessions", 2000, "idle sessions to open, each joined to a room and polling (each holds one connection: at most 9,000 per process)")
	rooms := fs.Int("rooms", 100, "rooms the idle sessions spread over")
	sources := fs.Int("sources", 4, "local source addresses 127.0.0.1..N")
	parallel := fs.Int("parallel", 32, "concurrent session openings")
	settle := fs.Duration("settle", 5*time.Second, "wait after the last idle session joined before reading memory")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sessions < 0 || *sessions > 9000 {
		return fmt.Errorf("-sessions must be 0..9000 in one process")
	}
	if *inflight <= 0 || *messages <= 0 {
		return fmt.Errorf("-messages and -inflight must be positive")
	}
	if !strings.Contains(tf.nodeFlags, "--conformance") {
		tf.nodeFlags += " --conformance"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	t, err := tf.open(ctx)
	if err != nil {
		return err
	}
	defer t.close()
	base := "http://" + t.addr + "/socket/longpoll"
	res := longpollResult{Scenario: "longpoll", DownMessages: *messages, UpMessages: *messages, Inflight: *inflight, Sessions: *sessions}
	cpu0, _ := cpuSeconds(t.pid)
	self0, _ := cpuSeconds(0)

	if err := lpDown(ctx, t.addr, base, &res); err != nil {
		return fmt.Errorf("one session, server to client: %w", err)
	}
	if err := lpUp(ctx, base, &res); err != nil {
		return fmt.Errorf("one session, client to server: %w", err)
	}
	if *sessions > 0 {
		if err := lpIdle(ctx, t, base, *sessions, *rooms, *sources, *parallel, *settle, &res); err != nil {
			return fmt.Errorf("idle sessions: %w", err)
		}
	}
	cpu1, _ := cpuSeconds(t.pid)
	self1, _ := cpuSeconds(0)
	res.ServerCPU, res.ClientCPU = cpu1-cpu0, self1-self0

	fmt.Printf("scenario            longpoll\n")
	fmt.Printf("down, one session   %d of %d received (%d lost, %d duplicated, %d reordered) in %d polls: %.0f msg/s, latency p50 %.2f ms p99 %.2f ms (at most %d in flight)\n",
		res.DownReceived, res.DownMessages, res.DownLost, res.DownDups, res.DownReordered, res.DownPolls, res.DownPerSecond, res.DownP50ms, res.DownP99ms, res.Inflight)
	fmt.Printf("up, one session     %d pushes answered in %d POSTs: %.0f msg/s\n", res.UpMessages, res.UpPosts, res.UpPerSecond)
	if res.Sessions > 0 {
		fmt.Printf("idle sessions       %d of %d open and joined in %.2f s\n", res.SessionsOpen, res.Sessions, res.OpenSeconds)
		fmt.Printf("server RSS          %.1f MiB before, %.1f MiB after (settled %s)\n", mib(res.RSSBefore), mib(res.RSSAfter), *settle)
		fmt.Printf("per idle session    %.0f bytes (%.2f KiB)\n", res.BytesPerSession, res.BytesPerSession/1024)
	}
	fmt.Printf("cpu                 server %.2f s, this client %.2f s\n", res.ServerCPU, res.ClientCPU)
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	return nil
}

// lpDown: a WebSocket publisher broadcasts (broadcast_from) numbered messages on the
// session's topic, never more than res.Inflight ahead of what the session
// has received, so the session's buffer never overflows and the figure is
// the rate the session sustains.
func lpDown(ctx context.Context, addr, base string, res *longpollResult) error {
	const topic = "conformance:bench-lp"
	c, err := lpclient.Open(ctx, base, lpclient.Options{RequestLog: -1, Buffer: 4 * res.Inflight})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Join(ctx, topic, nil); err != nil {
		return err
	}
	pub, err := wsclient.Dial(ctx, "ws://"+addr+"/socket/websocket", wsclient.Options{Buffer: 1 << 16})
	if err != nil {
		return err
	}
	defer pub.Close()
	if _, err := pub.Join(ctx, topic, nil); err != nil {
		return err
	}
	go func() { // the publisher's own copies and replies
		for {
			if _, err := pub.Next(ctx); err != nil {
				return
			}
		}
	}()

	var received atomic.Int64
	lat := make([]float64, 0, res.DownMessages)
	readDone := make(chan error, 1)
	go func() {
		last := 0
		seen := make(map[int]bool, res.DownMessages)
		for int(received.Load()) < res.DownMessages {
			m, err := c.Await(ctx, wsclient.IsEvent(topic, "shout"))
			if err != nil {
				readDone <- err
				return
			}
			var p struct {
				Seq int   `json:"seq"`
				T   int64 `json:"t"`
			}
			if json.Unmarshal(m.Payload, &p) != nil {
				continue
			}
			if seen[p.Seq] {
				res.DownDups++
				continue
			}
			seen[p.Seq] = true
			if p.Seq < last {
				res.DownReordered++
			}
			last = p.Seq
			lat = append(lat, float64(time.Now().UnixNano()-p.T)/1e6)
			received.Add(1)
		}
		readDone <- nil
	}()

	start := time.Now()
	stall := time.Now()
	for seq := 1; seq <= res.DownMessages; seq++ {
		for seq-int(received.Load()) > res.Inflight {
			if time.Since(stall) > 15*time.Second {
				return fmt.Errorf("nothing received for 15 s (%d of %d)", received.Load(), seq-1)
			}
			time.Sleep(100 * time.Microsecond) // pacing the publisher on the reader's count
		}
		stall = time.Now()
		payload := json.RawMessage(`{"seq":` + strconv.Itoa(seq) + `,"t":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `,"pad":"` + strings.Repeat("x", 40) + `"}`)
		// shout is broadcast_from: the publisher gets its replies only.
		if _, err := pub.Push(topic, "shout", payload); err != nil {
			return fmt.Errorf("publisher (%s): %w", pub.Status(), err)
		}
	}
	select {
	case err := <-readDone:
		if err != nil {
			res.DownLost = res.DownMessages - int(received.Load())
			if res.DownLost == 0 {
				return err
			}
		}
	case <-time.After(15 * time.Second):
		res.DownLost = res.DownMessages - int(received.Load())
	}
	secs := time.Since(start).Seconds()
	res.DownReceived = int(received.Load())
	res.DownPerSecond = float64(res.DownReceived) / secs
	slices.Sort(lat)
	res.DownP50ms, res.DownP99ms = pct(lat, 0.50), pct(lat, 0.99)
	res.DownPolls = c.Stats().Gets
	return nil
}

// lpUp: the session pushes "ping" events as fast as its POSTs go (the
// client batches what accumulates while a POST is in flight, at most 100
// lines, as phoenix.js does); every reply comes back on its polls.
func lpUp(ctx context.Context, base string, res *longpollResult) error {
	const topic = "conformance:bench-lp-up"
	c, err := lpclient.Open(ctx, base, lpclient.Options{RequestLog: -1, Buffer: 1 << 16})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Join(ctx, topic, nil); err != nil {
		return err
	}
	posts0 := c.Stats().Posts
	start := time.Now()
	replies := make(chan error, 1)
	go func() {
		for got := 0; got < res.UpMessages; got++ {
			if _, err := c.Await(ctx, func(m wsclient.Message) bool { return m.Topic == topic && m.Event == "phx_reply" }); err != nil {
				replies <- err
				return
			}
		}
		replies <- nil
	}()
	for i := 0; i < res.UpMessages; i++ {
		if _, err := c.Push(topic, "ping", json.RawMessage(`{"n":`+strconv.Itoa(i)+`}`)); err != nil {
			return err
		}
	}
	if err := <-replies; err != nil {
		return err
	}
	res.UpPerSecond = float64(res.UpMessages) / time.Since(start).Seconds()
	res.UpPosts = c.Stats().Posts - posts0
	return nil
}

// lpIdle opens n sessions, each joined to a room and then only polling,
// and reads the node's memory before and after.
func lpIdle(ctx context.Context, t *target, base string, n, rooms, sources, parallel int, settle time.Duration, res *longpollResult) error {
	var srcN atomic.Uint32
	tr := &http.Transport{
		MaxIdleConnsPerHost: n + 16,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			src := net.IPv4(127, 0, 0, byte(1+int(srcN.Add(1))%sources))
			d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: src}}
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	res.RSSBefore, _ = rssBytes(t.pid)

	var (
		mu      sync.Mutex
		clients []*lpclient.Client
		next    atomic.Int64
		failed  atomic.Int64
		lastErr atomic.Value
		wg      sync.WaitGroup
	)
	start := time.Now()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				user := "lp" + strconv.Itoa(i)
				c, err := lpclient.Open(ctx, base, lpclient.Options{HTTPClient: hc, RequestLog: -1, Params: map[string]string{"user": user}})
				if err == nil {
					_, err = c.Join(ctx, "room:bench-"+strconv.Itoa(i%rooms), map[string]string{"user": user})
				}
				if err != nil {
					failed.Add(1)
					lastErr.Store(err.Error())
					if c != nil {
						c.Close()
					}
					continue
				}
				mu.Lock()
				clients = append(clients, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.OpenSeconds = time.Since(start).Seconds()
	res.SessionsOpen = int64(len(clients))
	if e, ok := lastErr.Load().(string); ok {
		fmt.Fprintf(os.Stderr, "longpoll: %d sessions failed, last error: %s\n", failed.Load(), e)
	}
	// The room's presence traffic keeps arriving during the settle; the
	// clients drain it so their sessions stay idle but alive.
	drain, stop := context.WithCancel(ctx)
	for _, c := range clients {
		go func() {
			for {
				if _, err := c.Next(drain); err != nil {
					return
				}
			}
		}()
	}
	select {
	case <-time.After(settle):
	case <-ctx.Done():
	}
	res.RSSAfter, _ = rssBytes(t.pid)
	if res.SessionsOpen > 0 && res.RSSAfter > 0 {
		res.BytesPerSession = float64(res.RSSAfter-res.RSSBefore) / float64(res.SessionsOpen)
	}
	stop()
	for _, c := range clients {
		c.Close()
	}
	return nil
}
