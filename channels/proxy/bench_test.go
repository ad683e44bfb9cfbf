package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/test/childproc"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// plainChannel is a channel without a backend: the fan-out baseline.
type plainChannel struct{}

func (plainChannel) Join(*channels.ChannelSocket, channels.Payload) (any, error) { return nil, nil }
func (plainChannel) HandleIn(*channels.ChannelSocket, channels.In) channels.Result {
	return channels.NoReply()
}

// sinkConn counts the frames a socket is sent and keeps none.
type sinkConn struct{ n atomic.Int64 }

func (c *sinkConn) Send(channels.Frame) error { c.n.Add(1); return nil }
func (c *sinkConn) Close(int, string)         {}

// BenchmarkFanout: one broadcast to a topic's 1,000 subscribers, the topic
// proxied (join, event and leave calls) or plain. A broadcast makes no
// backend call, so both cost the same; an op is one broadcast, delivered
// to every subscriber before Broadcast returns (pubsub/local).
//
// Two more cases tell the channel type from the setup: a plain topic
// whose joins were each preceded by a backend call (plain-aftercalls),
// which leaves the joins' structures among the calls' garbage as a
// proxied join does, and a proxied topic without a join call
// (proxied-nojoin).
//
//	go test ./channels/proxy -run '^$' -bench Fanout -benchmem
func BenchmarkFanout(b *testing.B) {
	const subs = 1000
	be := newBackend(b)
	e := newEnv(b, Config{}, nil, func(r *channels.Router, c *Client) {
		r.Handle("proxied:*", c.Factory(Spec{Join: be.url("/join"), Event: be.url("/event"), Leave: be.url("/leave")}))
		r.Handle("proxied-nojoin:*", c.Factory(Spec{Event: be.url("/event"), Leave: be.url("/leave")}))
		r.Handle("plain-aftercalls:*", func(string) channels.Channel { return plainChannel{} })
		r.Handle("plain:*", func(string) channels.Channel { return plainChannel{} })
	})
	payload := json.RawMessage(`{"body":"a message of about a hundred bytes, as the other fan-out figures use, x"}`)
	for _, topic := range []string{"plain:1", "proxied:1", "proxied-nojoin:1", "plain-aftercalls:1"} {
		b.Run(strings.TrimSuffix(topic, ":1"), func(b *testing.B) {
			rt := e.ep.Runtime()
			conns := make([]*sinkConn, subs)
			for i := range conns {
				conns[i] = &sinkConn{}
				s := rt.Open(conns[i], channels.V2, channels.Identity{})
				b.Cleanup(func() { rt.HandleClose(s) })
				if topic == "plain-aftercalls:1" {
					_ = e.client.call(context.Background(), CallJoin, be.url("/join"), &JoinRequest{Topic: topic}, &Answer{})
				}
				rt.HandleFrame(s, []byte(`["1","1","`+topic+`","phx_join",{}]`), false)
				if conns[i].n.Load() != 1 {
					b.Fatalf("join of %s not answered", topic)
				}
			}
			calls := be.count("/event") + be.count("/join")
			ctx := context.Background()
			runtime.GC()
			for b.Loop() {
				if err := e.ep.Broadcast(ctx, topic, "new_msg", payload); err != nil {
					b.Fatal(err)
				}
			}
			for _, c := range conns {
				if c.n.Load() != int64(b.N)+1 {
					b.Fatalf("a subscriber got %d frames for %d broadcasts", c.n.Load()-1, b.N)
				}
			}
			if n := be.count("/event") + be.count("/join") - calls; n != 0 {
				b.Fatalf("%d backend calls during the broadcasts", n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subs), "ns/delivery")
		})
	}
}

// BenchmarkConnectStorm: 1,000 WebSocket clients connect at once to a node
// whose connect proxy calls a backend that answers each call in 20 ms.
// Every client must be connected; the backend sees at most MaxConns
// calls and connections at once. An op is one storm; the metrics are its
// wall time, the peaks seen by the backend, the node's own CPU time per
// connect, and the CPU time of this process, the clients' and the
// backend's. The node is this test binary run again as a process of its
// own (stormNodeEnv), so that its CPU time, read with getrusage in the
// node's process (GET /rusage) before and after each storm, is the
// node's alone.
//
// The same storm against a backend answering at once is the baseline: what
// the machine takes to open 1,000 sockets with a connect call each.
//
//	go test ./channels/proxy -run '^$' -bench ConnectStorm -benchtime 3x
func BenchmarkConnectStorm(b *testing.B) {
	for _, delay := range []time.Duration{20 * time.Millisecond, 0} {
		b.Run("backend="+delay.String(), func(b *testing.B) { connectStorm(b, delay) })
	}
}

// stormNodeEnv, set to a connect URL, makes the test binary a node whose
// connect proxy calls that URL (runStormNode).
const stormNodeEnv = "CHANNELSD_PROXY_STORM_NODE"

// stormClients is the size of a storm; the node's handshake limits must
// let it in at once.
const stormClients = 1000

// runStormNode runs the node of BenchmarkConnectStorm: it prints its
// address on a line of its own, answers GET /rusage with its CPU time
// (user and system, in ns), and stops when its standard input closes.
func runStormNode(url string) int {
	client, err := NewClient(Config{Timeout: 30 * time.Second, MaxConns: DefaultMaxConns})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer client.Close()
	n, err := node.New(node.Config{
		Addr: "127.0.0.1:0", SocketPath: "/socket",
		Router:          &channels.Router{},
		SocketHandler:   &ConnectHandler{Client: client, URL: url},
		Logger:          slog.New(slog.DiscardHandler),
		ShutdownTimeout: 10 * time.Second,
		// The storm is the measure, not the limits: the defaults
		// would rate nothing here, but a handshake timeout must
		// outlast 1,000 calls through 64 connections.
		HandshakeTimeout:   30 * time.Second,
		MaxPendingUpgrades: stormClients,
		Home: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, strconv.FormatInt(int64(cpuTime()), 10))
		}),
	})
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("addr", n.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		return 1
	}
	return 0
}

// stormNode is a running runStormNode process.
type stormNode struct {
	addr string
	http *http.Client
}

// startStormNode starts the node process, stopped in b.Cleanup.
func startStormNode(b *testing.B, connectURL string) *stormNode {
	b.Helper()
	line := childproc.Start(b, stormNodeEnv+"="+connectURL)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	if !ok {
		b.Fatalf("the node process said %q", line)
	}
	return &stormNode{addr: addr, http: &http.Client{Timeout: 10 * time.Second}}
}

// cpu is the node process's CPU time so far.
func (n *stormNode) cpu(b *testing.B) time.Duration {
	b.Helper()
	resp, err := n.http.Get("http://" + n.addr + "/rusage")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	ns, perr := strconv.ParseInt(string(body), 10, 64)
	if err != nil || perr != nil {
		b.Fatalf("GET /rusage: %q %v %v", body, err, perr)
	}
	return time.Duration(ns)
}

func connectStorm(b *testing.B, delay time.Duration) {
	const clients, maxConns = stormClients, DefaultMaxConns
	var inflight, peakCalls, open, peakOpen, dialled atomic.Int64
	peak := func(cur int64, p *atomic.Int64) {
		for v := p.Load(); cur > v && !p.CompareAndSwap(v, cur); v = p.Load() {
		}
	}
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peak(inflight.Add(1), &peakCalls)
		defer inflight.Add(-1)
		var req ConnectRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			w.WriteHeader(400)
			return
		}
		time.Sleep(delay)
		user := req.Params["user"]
		_, _ = io.WriteString(w, `{"status":"ok","socket_id":"user:`+user+`","user":"`+user+`"}`)
	}))
	be.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			dialled.Add(1)
			peak(open.Add(1), &peakOpen)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	be.Start()
	defer be.Close()
	n := startStormNode(b, be.URL+"/connect")
	url := "ws://" + n.addr + "/socket/websocket"

	var elapsed, p50, p99, nodeCPU time.Duration
	cpu0 := cpuTime()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		start := make(chan struct{})
		conns := make([]*wsclient.Client, clients)
		errs := make([]error, clients)
		took := make([]time.Duration, clients)
		var wg sync.WaitGroup
		for i := range clients {
			wg.Go(func() {
				<-start
				t := time.Now()
				conns[i], errs[i] = wsclient.Dial(ctx, url, wsclient.Options{Params: map[string]string{"user": strconv.Itoa(i)}})
				took[i] = time.Since(t)
			})
		}
		node0 := n.cpu(b)
		t0 := time.Now()
		close(start)
		wg.Wait()
		elapsed += time.Since(t0)
		nodeCPU += n.cpu(b) - node0
		b.StopTimer()
		slices.Sort(took)
		p50 += took[clients/2]
		p99 += took[clients*99/100]
		failed := 0
		for i, err := range errs {
			if err != nil {
				failed++
				if failed == 1 {
					b.Errorf("client %d: %v", i, err)
				}
				continue
			}
			conns[i].Close()
		}
		cancel()
		if failed > 0 {
			b.Fatalf("%d of %d clients not connected", failed, clients)
		}
		b.StartTimer()
	}
	cpu := cpuTime() - cpu0
	if p := peakCalls.Load(); p > maxConns {
		b.Errorf("%d calls at once at the backend, MaxConns %d", p, maxConns)
	}
	if p := peakOpen.Load(); p > maxConns {
		b.Errorf("%d connections open at once to the backend, MaxConns %d", p, maxConns)
	}
	b.ReportMetric(float64(elapsed.Milliseconds())/float64(b.N), "ms/storm")
	b.ReportMetric(float64(p50.Milliseconds())/float64(b.N), "p50-connect-ms")
	b.ReportMetric(float64(p99.Milliseconds())/float64(b.N), "p99-connect-ms")
	b.ReportMetric(float64(nodeCPU.Microseconds())/float64(b.N*clients), "node-cpu-us/connect")
	b.ReportMetric(float64(nodeCPU.Milliseconds())/float64(b.N), "node-cpu-ms/storm")
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "clients+backend-cpu-ms/storm")
	b.ReportMetric(float64(peakCalls.Load()), "peak-calls")
	b.ReportMetric(float64(peakOpen.Load()), "peak-backend-conns")
	b.ReportMetric(float64(dialled.Load()), "backend-conns-opened")
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
