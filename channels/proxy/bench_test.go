package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
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
// calls and connections at once. An op is one storm; the metrics are
// its wall time, the peaks seen by the backend, and the CPU time of the
// whole process (node, clients and backend: they share it).
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

func connectStorm(b *testing.B, delay time.Duration) {
	const clients, maxConns = 1000, DefaultMaxConns
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
	client, err := NewClient(Config{Timeout: 30 * time.Second, MaxConns: maxConns})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	n, err := node.New(node.Config{
		Addr: "127.0.0.1:0", SocketPath: "/socket",
		Router:          &channels.Router{},
		SocketHandler:   &ConnectHandler{Client: client, URL: be.URL + "/connect"},
		Logger:          slog.New(slog.DiscardHandler),
		ShutdownTimeout: 10 * time.Second,
		// The storm is the measure, not the limits: the defaults
		// would rate nothing here, but a handshake timeout must
		// outlast 1,000 calls through 64 connections.
		HandshakeTimeout:   30 * time.Second,
		MaxPendingUpgrades: clients,
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	}()
	url := "ws://" + n.Addr().String() + "/socket/websocket"

	var elapsed, p50, p99 time.Duration
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
		t0 := time.Now()
		close(start)
		wg.Wait()
		elapsed += time.Since(t0)
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
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/storm")
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
