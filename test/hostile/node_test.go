package hostile

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// node is the channelsd process under attack: the binary TestMain built,
// with its default flags but --addr, on a free loopback port.
type node struct {
	addr   string // 127.0.0.1:port
	cmd    *exec.Cmd
	out    *headTail
	exited chan struct{}
}

// startNode starts the node and waits for /readyz. Every CHANNELS_*
// variable of the test's environment is left out: the point is the
// defaults.
func startNode(t *testing.T) *node {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	n := &node{addr: addr, out: &headTail{max: 32 << 10}, exited: make(chan struct{})}
	n.cmd = exec.Command(nodeBin, "--addr="+addr)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHANNELS_") && !strings.HasPrefix(kv, "GOGC=") && !strings.HasPrefix(kv, "GOMEMLIMIT=") {
			n.cmd.Env = append(n.cmd.Env, kv)
		}
	}
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", nodeBin, err)
	}
	go func() { _ = n.cmd.Wait(); close(n.exited) }()
	t.Cleanup(n.kill)
	// A process that was just started offers no readiness event but its
	// listening socket: poll /readyz within a deadline.
	deadline := time.Now().Add(15 * time.Second)
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n
			}
		}
		select {
		case <-n.exited:
			t.Fatalf("channelsd exited during start-up:\n%s", n.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("channelsd on %s not ready after 15 s:\n%s", addr, n.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops the node at once: the soak tests no shutdown, and a drain
// would take its 20 s window.
func (n *node) kill() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
}

func (n *node) alive() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (n *node) pid() int { return n.cmd.Process.Pid }

// headTail keeps the first and the last max bytes of what a process
// writes, so that a chatty node costs bounded memory and a failure still
// shows how it began and how it ended.
type headTail struct {
	mu      sync.Mutex
	max     int
	head    []byte
	tail    []byte
	dropped int
}

func (b *headTail) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if room := b.max - len(b.head); room > 0 {
		k := min(room, len(p))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	b.tail = append(b.tail, p...)
	if over := len(b.tail) - b.max; over > 0 {
		b.dropped += over
		b.tail = append(b.tail[:0], b.tail[over:]...)
	}
	return n, nil
}

func (b *headTail) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped == 0 {
		return string(b.head) + string(b.tail)
	}
	return fmt.Sprintf("%s\n[... %d bytes ...]\n%s", b.head, b.dropped, b.tail)
}

// sample is one reading of the node: /metrics for the heap and what the
// node counts, /proc for descriptors and RSS (which need no answer from a
// node that may be struggling).
type sample struct {
	at   time.Duration // since the monitor started
	heap float64       // go_memstats_heap_inuse_bytes; 0 when /metrics did not answer
	// live is the heap that survived the last GC, as the GC's goal says
	// (next_gc = live × (1 + GOGC/100)): unlike heap, it holds no garbage,
	// which at the node's GOGC=50 may add half the live heap.
	live      float64
	rss       float64 // VmRSS
	fds       int     // entries of /proc/<pid>/fd
	scrapeErr error
	metrics   map[string]float64
}

// monitor samples the node every second until stopped and trips a safety
// ceiling: a node whose heap passes it has lost this test already, and the
// attacks stop before it takes the machine's memory (it is shared).
type monitor struct {
	n       *node
	start   time.Time
	ceiling float64
	tripped func()

	mu      sync.Mutex
	samples []sample // guarded by mu
	stop    chan struct{}
	done    chan struct{}
}

func startMonitor(n *node, ceiling float64, tripped func()) *monitor {
	m := &monitor{n: n, start: time.Now(), ceiling: ceiling, tripped: tripped, stop: make(chan struct{}), done: make(chan struct{})}
	go m.loop()
	return m
}

func (m *monitor) loop() {
	defer close(m.done)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	once := false
	for {
		s := m.read(hc)
		m.mu.Lock()
		m.samples = append(m.samples, s)
		m.mu.Unlock()
		if !once && (s.heap > m.ceiling || s.rss > 1.5*m.ceiling) {
			once = true
			m.tripped()
		}
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
	}
}

// Stop ends the sampling after one last reading.
func (m *monitor) Stop() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}

func (m *monitor) read(hc *http.Client) sample {
	s := sample{at: time.Since(m.start)}
	pid := m.n.pid()
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.fds = len(ents)
	}
	s.rss = float64(rssBytes(pid))
	s.metrics, s.scrapeErr = scrape(hc, "http://"+m.n.addr+"/metrics")
	s.heap = s.metrics["go_memstats_heap_inuse_bytes"]
	if gogc := s.metrics["go_gc_gogc_percent"]; gogc > 0 {
		s.live = s.metrics["go_memstats_next_gc_bytes"] / (1 + gogc/100)
	}
	return s
}

// now returns a fresh reading (not recorded), for the marks of the
// attacks in slots.
func (m *monitor) last() sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.samples) == 0 {
		return sample{}
	}
	return m.samples[len(m.samples)-1]
}

// since returns the samples taken at or after at.
func (m *monitor) since(at time.Duration) []sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []sample
	for _, s := range m.samples {
		if s.at >= at {
			out = append(out, s)
		}
	}
	return out
}

func (m *monitor) elapsed() time.Duration { return time.Since(m.start) }

func peak(ss []sample, f func(sample) float64) float64 {
	var p float64
	for _, s := range ss {
		p = max(p, f(s))
	}
	return p
}

func heapOf(s sample) float64 { return s.heap }
func liveOf(s sample) float64 { return s.live }
func rssOf(s sample) float64  { return s.rss }
func fdsOf(s sample) float64  { return float64(s.fds) }

// scrape reads a Prometheus text page into name{labels} → value.
func scrape(hc *http.Client, url string) (map[string]float64, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// rssBytes reads a process's resident set size from /proc (0 if gone).
func rssBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// limitHits sums channelsd_limit_hits_total by label from a scrape.
func limitHits(metrics map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range metrics {
		if rest, ok := strings.CutPrefix(k, `channelsd_limit_hits_total{limit="`); ok && v > 0 {
			out[strings.TrimSuffix(rest, `"}`)] = v
		}
	}
	return out
}

func mib(b float64) float64 { return b / (1 << 20) }

// awaitCtx sleeps for d or until ctx ends; it reports whether ctx is
// still live. Attack loops pace themselves with it (a rate, not a
// synchronisation).
func awaitCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// cpuSeconds reads a process's user and system CPU time from /proc.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}
