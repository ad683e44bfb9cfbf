package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// fanoutResult is the fanout (and cluster) scenario's outcome.
type fanoutResult struct {
	Scenario        string  `json:"scenario"`
	Nodes           int     `json:"nodes"`
	Subscribers     int     `json:"subscribers"`
	Topics          int     `json:"topics"`
	Published       int64   `json:"published"`
	PublishErrors   int64   `json:"publish_errors"`
	Rate            float64 `json:"target_rate"`
	Expected        int64   `json:"expected_deliveries"`
	Delivered       int64   `json:"delivered"`
	Lost            int64   `json:"lost"`
	Duplicates      int64   `json:"duplicates"`
	Reordered       int64   `json:"reordered"`
	Seconds         float64 `json:"seconds"`
	DeliveriesPerS  float64 `json:"deliveries_per_second"`
	P50ms           float64 `json:"latency_p50_ms"`
	P90ms           float64 `json:"latency_p90_ms"`
	P99ms           float64 `json:"latency_p99_ms"`
	MaxMs           float64 `json:"latency_max_ms"`
	CrossP50ms      float64 `json:"cross_node_p50_ms,omitempty"`
	CrossP99ms      float64 `json:"cross_node_p99_ms,omitempty"`
	ServerCPU       float64 `json:"server_cpu_seconds"`
	CPUPerMillion   float64 `json:"server_cpu_seconds_per_million_deliveries"`
	ClientCPU       float64 `json:"client_cpu_seconds"`
	PayloadBytes    int     `json:"payload_bytes"`
	ClientProcesses int     `json:"client_processes"`
}

// subscriber is one socket joined to one topic; it checks every delivery's
// sequence number and records latency.
type subscriber struct {
	conn   net.Conn
	node   int
	topic  int
	last   int64 // last sequence seen
	seen   int64
	dups   int64
	reord  int64
	lat    []float32 // milliseconds
	closed chan struct{}

	// With epoll readers (readers_linux.go): the socket's duplicated
	// descriptor, and the start of a frame that a read cut.
	fd      int
	partial []byte
}

func runFanout(ctx context.Context, args []string, scenario string) error {
	fs := flag.NewFlagSet(scenario, flag.ContinueOnError)
	addrs := fs.String("addrs", "127.0.0.1:4000", "comma-separated node addresses (loopback only); subscribers spread over them, the publisher uses the first")
	pids := fs.String("pids", "", "comma-separated node pids, for server CPU readings")
	subs := fs.Int("subs", 2000, "subscribers in all (at most 19,000 per process)")
	topics := fs.Int("topics", 1, "topics the subscribers spread over")
	rate := fs.Float64("rate", 100, "messages per second to publish (0: as fast as the replies allow)")
	count := fs.Int("count", 1000, "messages to publish")
	payload := fs.Int("payload", 100, "approximate payload size in bytes")
	sources := fs.Int("sources", 4, "local source addresses 127.0.0.1..N")
	timeout := fs.Duration("timeout", 3*time.Minute, "bound on the whole run")
	readers := fs.Int("readers", runtime.NumCPU(), "threads reading the subscribers' sockets through epoll (Linux); 0: a goroutine per socket")
	cpuProfile := fs.String("cpuprofile", "", "write this client's CPU profile, from the first publish to the last delivery, to this file: the client shares the cores with the nodes it measures")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nodes := strings.Split(*addrs, ",")
	for _, a := range nodes {
		if err := checkLoopback(a); err != nil {
			return err
		}
	}
	if *subs <= 0 || *subs > 19000 || *topics <= 0 || *count <= 0 {
		return fmt.Errorf("need 0 < -subs <= 19000, -topics > 0, -count > 0")
	}
	var nodePids []int
	for _, p := range strings.Split(*pids, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
			nodePids = append(nodePids, n)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	// Subscribers: subscriber i goes to node i mod len(nodes) and topic
	// i mod topics, so every topic has subscribers on every node.
	all := make([]*subscriber, *subs)
	var wg sync.WaitGroup
	var failed atomic.Int64
	next := atomic.Int64{}
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *subs || ctx.Err() != nil {
					return
				}
				s := &subscriber{node: i % len(nodes), topic: i % *topics, closed: make(chan struct{})}
				src := net.IPv4(127, 0, 0, byte(1+i%*sources))
				c, err := dialV2(ctx, nodes[s.node], src, "")
				if err == nil {
					err = joinTopic(c, fmt.Sprintf("conformance:bench-%d", s.topic))
				}
				if err != nil {
					failed.Add(1)
					fmt.Fprintln(os.Stderr, scenario+": subscriber:", err)
					if c != nil {
						c.Close()
					}
					continue
				}
				s.conn = c
				all[i] = s
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d subscribers failed to join", n)
	}
	fmt.Fprintf(os.Stderr, "%s: %d subscribers joined on %d nodes\n", scenario, *subs, len(nodes))
	stopReaders := func() {
		for _, s := range all {
			s.conn.Close()
			<-s.closed
		}
	}
	if *readers > 0 {
		stop, err := startReaders(all, *readers)
		if err != nil {
			return fmt.Errorf("readers: %w", err)
		}
		stopReaders = stop
	} else {
		for _, s := range all {
			go s.read()
		}
	}

	// Publishers on the first node: one socket per 100 topics, the
	// per-socket channel limit.
	pubs := make([]net.Conn, (*topics+99)/100)
	for i := range pubs {
		pub, err := dialV2(ctx, nodes[0], net.IPv4(127, 0, 0, 1), "")
		if err != nil {
			return fmt.Errorf("publisher: %w", err)
		}
		defer pub.Close()
		for t := i * 100; t < min(*topics, (i+1)*100); t++ {
			if err := joinTopic(pub, fmt.Sprintf("conformance:bench-%d", t)); err != nil {
				return fmt.Errorf("publisher: %w", err)
			}
		}
		// The publisher's own copies and replies are drained and ignored.
		go func() {
			for {
				if _, _, err := wsutil.ReadServerData(pub); err != nil {
					return
				}
			}
		}()
		pubs[i] = pub
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := sumCPU(nodePids)
	self0, _ := cpuSeconds(0)
	pad := strings.Repeat("x", max(0, *payload-40))
	start := time.Now()
	var published, pubErrs int64
	var interval time.Duration
	if *rate > 0 {
		interval = time.Duration(float64(time.Second) / *rate)
	}
	for seq := 1; seq <= *count && ctx.Err() == nil; seq++ {
		if interval > 0 {
			if d := time.Until(start.Add(time.Duration(seq-1) * interval)); d > 0 {
				time.Sleep(d) // pacing the publisher, not synchronisation
			}
		}
		topic := (seq - 1) % *topics
		frame := fmt.Sprintf(`[null,"%d","conformance:bench-%d","broadcast",{"seq":%d,"t":%d,"pad":%q}]`,
			seq, topic, seq, time.Now().UnixNano(), pad)
		if err := wsutil.WriteClientText(pubs[topic/100], []byte(frame)); err != nil {
			pubErrs++
			continue
		}
		published++
	}
	pubSeconds := time.Since(start).Seconds()

	// Expected deliveries: every message reaches every subscriber of its
	// topic. Wait until all arrived or nothing arrived for 3 s.
	perTopic := make([]int64, *topics)
	for seq := 1; seq <= int(published); seq++ {
		perTopic[(seq-1)%*topics]++
	}
	var expected int64
	for _, s := range all {
		expected += perTopic[s.topic]
	}
	var delivered int64
	lastChange, lastCount := time.Now(), int64(-1)
	for ctx.Err() == nil {
		delivered = 0
		for _, s := range all {
			delivered += atomic.LoadInt64(&s.seen)
		}
		if delivered >= expected {
			break
		}
		if delivered != lastCount {
			lastCount, lastChange = delivered, time.Now()
		} else if time.Since(lastChange) > 3*time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling counters owned by reader goroutines
	}
	elapsed := time.Since(start).Seconds()
	cpu1 := sumCPU(nodePids)
	self1, _ := cpuSeconds(0)
	stopReaders()

	res := fanoutResult{Scenario: scenario, Nodes: len(nodes), Subscribers: *subs, Topics: *topics,
		Published: published, PublishErrors: pubErrs, Rate: *rate, Expected: expected,
		Seconds: elapsed, PayloadBytes: *payload, ClientProcesses: 1}
	var lat, cross []float64
	for _, s := range all {
		res.Delivered += s.seen
		res.Duplicates += s.dups
		res.Reordered += s.reord
		for _, l := range s.lat {
			lat = append(lat, float64(l))
			if s.node != 0 {
				cross = append(cross, float64(l))
			}
		}
	}
	res.Lost = expected - (res.Delivered - res.Duplicates)
	res.DeliveriesPerS = float64(res.Delivered) / elapsed
	res.P50ms, res.P90ms, res.P99ms, res.MaxMs = pct(lat, 50), pct(lat, 90), pct(lat, 99), pct(lat, 100)
	if len(nodes) > 1 {
		res.CrossP50ms, res.CrossP99ms = pct(cross, 50), pct(cross, 99)
	}
	res.ServerCPU = cpu1 - cpu0
	res.ClientCPU = self1 - self0
	if res.Delivered > 0 {
		res.CPUPerMillion = res.ServerCPU / float64(res.Delivered) * 1e6
	}

	fmt.Printf("scenario            %s (%d nodes)\n", scenario, res.Nodes)
	fmt.Printf("subscribers         %d over %d topics\n", res.Subscribers, res.Topics)
	fmt.Printf("published           %d in %.2f s (target %.0f/s), %d errors\n", res.Published, pubSeconds, res.Rate, res.PublishErrors)
	fmt.Printf("deliveries          %d of %d expected: %d lost, %d duplicates, %d reordered\n", res.Delivered, res.Expected, res.Lost, res.Duplicates, res.Reordered)
	fmt.Printf("throughput          %.0f deliveries/s\n", res.DeliveriesPerS)
	fmt.Printf("latency             p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n", res.P50ms, res.P90ms, res.P99ms, res.MaxMs)
	if len(nodes) > 1 {
		fmt.Printf("cross-node latency  p50 %.2f ms, p99 %.2f ms\n", res.CrossP50ms, res.CrossP99ms)
	}
	fmt.Printf("cpu                 servers %.2f s (%.2f s per million deliveries), this client %.2f s\n", res.ServerCPU, res.CPUPerMillion, res.ClientCPU)
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	return nil
}

var seqKey, tKey = []byte(`"seq":`), []byte(`"t":`)

// read is a subscriber's own reader goroutine (-readers 0).
func (s *subscriber) read() {
	defer close(s.closed)
	for {
		data, op, err := wsutil.ReadServerData(s.conn)
		if err != nil {
			return
		}
		if op == ws.OpText {
			s.record(data, time.Now().UnixNano())
		}
	}
}

// feed takes bytes read from the socket at now and records every whole
// frame in them; a cut frame waits in s.partial for the next read.
func (s *subscriber) feed(b []byte, now int64) {
	if len(s.partial) > 0 {
		s.partial = append(s.partial, b...)
		b = s.partial
	}
	for {
		payload, op, rest, ok := serverFrame(b)
		if !ok {
			break
		}
		if op == ws.OpText {
			s.record(payload, now)
		}
		b = rest
	}
	// append copies with memmove, so b may lie inside s.partial.
	s.partial = append(s.partial[:0], b...)
}

// serverFrame splits the first whole frame off b: a server's frames are
// unmasked (RFC 6455 §5.1), with a 7-bit, 16-bit or 64-bit length (RFC 6455 §5.2).
// The bench's messages are never fragmented.
func serverFrame(b []byte) (payload []byte, op ws.OpCode, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, 0, b, false
	}
	op = ws.OpCode(b[0] & 0x0f)
	n, h := uint64(b[1]&0x7f), 2
	switch n {
	case 126:
		if len(b) < 4 {
			return nil, 0, b, false
		}
		n, h = uint64(b[2])<<8|uint64(b[3]), 4
	case 127:
		if len(b) < 10 {
			return nil, 0, b, false
		}
		n, h = binary.BigEndian.Uint64(b[2:10]), 10
	}
	if uint64(len(b)-h) < n {
		return nil, 0, b, false
	}
	end := h + int(n)
	return b[h:end], op, b[end:], true
}

// record counts one message received at now: sequence checks and latency.
func (s *subscriber) record(data []byte, now int64) {
	if !bytes.Contains(data, []byte(`"broadcast"`)) {
		return
	}
	seq, ok1 := intAfter(data, seqKey)
	sent, ok2 := intAfter(data, tKey)
	if !ok1 || !ok2 {
		return
	}
	switch {
	case seq == s.last:
		atomic.AddInt64(&s.dups, 1)
	case seq < s.last:
		s.reord++
	default:
		s.last = seq
	}
	s.lat = append(s.lat, float32(float64(now-sent)/1e6))
	atomic.AddInt64(&s.seen, 1)
}

func intAfter(data, key []byte) (int64, bool) {
	i := bytes.Index(data, key)
	if i < 0 {
		return 0, false
	}
	rest := data[i+len(key):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	return n, err == nil
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	i := int(math.Ceil(p/100*float64(len(v)))) - 1
	return v[max(0, min(i, len(v)-1))]
}

func sumCPU(pids []int) float64 {
	total := 0.0
	for _, p := range pids {
		c, _ := cpuSeconds(p)
		total += c
	}
	return total
}

// dialV2 opens a V2 WebSocket from src to addr.
func dialV2(ctx context.Context, addr string, src net.IP, query string) (net.Conn, error) {
	d := ws.Dialer{
		Timeout: 10 * time.Second,
		NetDial: func(ctx context.Context, network, a string) (net.Conn, error) {
			nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
			return nd.DialContext(ctx, network, a)
		},
	}
	conn, br, _, err := d.Dial(ctx, "ws://"+addr+"/socket/websocket?vsn=2.0.0"+query)
	if err != nil {
		return nil, err
	}
	if br != nil {
		ws.PutReader(br)
	}
	return conn, nil
}

// joinTopic joins topic with params (JSON, "" for {}) and waits for the
// ok reply, skipping other frames.
func joinTopic(conn net.Conn, topic string, params ...string) error {
	p := "{}"
	if len(params) > 0 {
		p = params[0]
	}
	_, err := joinTopicRef(conn, topic, p)
	return err
}

// joinTopicRef is joinTopic returning the join_ref, which the channel's
// later pushes carry.
func joinTopicRef(conn net.Conn, topic, params string) (string, error) {
	ref := strconv.FormatInt(joinRefs.Add(1), 10)
	join := fmt.Sprintf(`[%q,%q,%q,"phx_join",%s]`, ref, ref, topic, params)
	if err := wsutil.WriteClientText(conn, []byte(join)); err != nil {
		return "", err
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	prefix := []byte(fmt.Sprintf(`[%q,%q,`, ref, ref))
	for {
		data, err := wsutil.ReadServerText(conn)
		if err != nil {
			return "", fmt.Errorf("awaiting join reply for %s: %w", topic, err)
		}
		if bytes.HasPrefix(data, prefix) {
			if !bytes.Contains(data, []byte(`"status":"ok"`)) {
				return "", fmt.Errorf("join %s refused: %s", topic, data)
			}
			return ref, nil
		}
	}
}

var joinRefs atomic.Int64
