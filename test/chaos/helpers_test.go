package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// ---- the results table ----

// row is one scenario's line in the table TestMain prints.
type row struct {
	Scenario            string
	NodesUp, Nodes      int
	HeapBefore, HeapAft float64 // MiB, go_memstats_heap_inuse_bytes, the largest over the nodes measured
	RSSBefore, RSSAft   float64 // MiB, process_resident_memory_bytes, likewise
	Recovered, Clients  int
	Owed, Lost, Dup     int
	Took                time.Duration
	Verdict             string
}

var table struct {
	sync.Mutex
	rows []*row
}

// newRow starts scenario's row; its verdict and duration are filled in
// when the test ends (after the cluster's teardown).
func newRow(t *testing.T, scenario string) *row {
	r := &row{Scenario: scenario}
	began := time.Now()
	t.Cleanup(func() {
		r.Took = time.Since(began)
		r.Verdict = "ok"
		if t.Failed() {
			r.Verdict = "FAIL"
		}
		table.Lock()
		table.rows = append(table.rows, r)
		table.Unlock()
	})
	return r
}

// memory sets the row's memory columns from before and after.
func (r *row) memory(before, after map[int]mem) {
	for _, m := range before {
		r.HeapBefore, r.RSSBefore = max(r.HeapBefore, m.heap), max(r.RSSBefore, m.rss)
	}
	for _, m := range after {
		r.HeapAft, r.RSSAft = max(r.HeapAft, m.heap), max(r.RSSAft, m.rss)
	}
}

// ---- nodes' memory and metrics ----

const mib = 1 << 20

// mem is a node's memory in MiB as its /metrics reports it.
type mem struct{ heap, rss float64 }

func (m mem) String() string { return fmt.Sprintf("heap %.1f MiB, RSS %.1f MiB", m.heap, m.rss) }

// memOf reads the memory of nodes.
func memOf(t testing.TB, cl *harness.Cluster, nodes ...int) map[int]mem {
	t.Helper()
	out := map[int]mem{}
	for _, i := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m, err := harness.Metrics(ctx, cl.Node(i).HTTPURL(), "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes")
		cancel()
		if err != nil {
			t.Fatalf("memory of node %d: %v", i, err)
		}
		out[i] = mem{heap: m["go_memstats_heap_inuse_bytes"] / mib, rss: m["process_resident_memory_bytes"] / mib}
	}
	return out
}

// Memory bounds: generous enough for a loaded two-core machine and the
// garbage collector's timing (a heap in use may double before a GC), far
// below what a leak of the load's messages or sockets would leave.
const (
	heapSlackMiB = 64
	rssSlackMiB  = 128
)

// checkMem fails the test when a node's memory after exceeds its bound:
// heap in use ≤ 2 × before + 64 MiB, RSS ≤ 2 × before + 128 MiB.
func checkMem(t testing.TB, before, after map[int]mem) {
	t.Helper()
	for i, a := range after {
		b, ok := before[i]
		if !ok {
			continue
		}
		t.Logf("node %d memory: before %s; after %s", i, b, a)
		if a.heap > 2*b.heap+heapSlackMiB {
			t.Errorf("node %d: heap in use %.1f MiB after, more than 2 × %.1f + %d MiB: a leak", i, a.heap, b.heap, heapSlackMiB)
		}
		if a.rss > 2*b.rss+rssSlackMiB {
			t.Errorf("node %d: RSS %.1f MiB after, more than 2 × %.1f + %d MiB: a leak", i, a.rss, b.rss, rssSlackMiB)
		}
	}
}

// readyNodes counts the nodes whose /readyz answers 200.
func readyNodes(cl *harness.Cluster) int {
	n := 0
	for i := 1; i <= cl.N(); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		code, err := cl.Ready(ctx, i)
		cancel()
		if err == nil && code == http.StatusOK {
			n++
		}
	}
	return n
}

// ---- the background load ----

// target is where a group of load clients connects: a WebSocket URL and
// the node behind it (0: a load balancer, node unknown).
type target struct {
	url  string
	node int
}

type loadOptions struct {
	// Name prefixes the rooms (room:<Name>-<r>) and users.
	Name string
	// Clients are spread over Targets in turn and over Rooms.
	Clients, Rooms int
	Targets        []target
	// PublishURL returns the base HTTP URL of the node or load balancer
	// to publish on (asked for every publish: a node's address changes
	// when it is reconnected).
	PublishURL func() string
	// PublishNode is the node behind PublishURL (0: a load balancer).
	// Its own clients get its broadcasts even when Redis is not there
	// (the API then answers 503: other nodes may have missed it).
	PublishNode int
	// Tick is the publisher's period; every tick publishes number n to
	// every room. 0 means 100 ms.
	Tick time.Duration
	// Pad adds a string of this many bytes to every payload.
	Pad int
}

// maxTicks bounds the publisher: a scenario that runs longer has hung.
const maxTicks = 3000

// slack: a broadcast the API acknowledged may still be on its way when a
// socket ends; at-most-once delivery owes it only to a client still
// connected this long after the publish returned (as in
// test/cluster/rolling_test.go).
const slack = time.Second

type loadClient struct {
	user string
	room int
	node int // the node dialled; 0 through a load balancer
	rc   *wsclient.Reconnecting
	got  *harness.Numbered
}

func (c *loadClient) count(n int) int { return c.got.Times(n) }

type publish struct {
	start, end time.Time
	ok         bool // 202: published
	code       int  // the API's status; 503: delivered locally, Redis failed
}

// load is the background load: bounded loops of reconnecting clients and
// one publisher.
type load struct {
	t    testing.TB
	o    loadOptions
	cs   []*loadClient
	from int // broadcasts up to this number are not accounted (before every client got one)

	pmu  sync.Mutex
	pubs map[[2]int]publish // {n, room}
	last int

	stopc chan struct{}
	done  chan struct{}
}

func (l *load) topic(r int) string { return "room:" + l.o.Name + "-" + strconv.Itoa(r) }

// startLoad connects the clients, starts the publisher and returns once
// every client has received a broadcast (every node is subscribed to
// every room); broadcasts before that are not accounted.
func startLoad(ctx context.Context, t testing.TB, o loadOptions) *load {
	t.Helper()
	if o.Tick == 0 {
		o.Tick = 100 * time.Millisecond
	}
	l := &load{t: t, o: o, pubs: map[[2]int]publish{}, stopc: make(chan struct{}), done: make(chan struct{})}
	l.cs = make([]*loadClient, o.Clients)
	errs := make([]error, o.Clients)
	var wg sync.WaitGroup
	for i := range o.Clients {
		tg := o.Targets[i%len(o.Targets)]
		c := &loadClient{user: fmt.Sprintf("%s-u%d", o.Name, i), room: i % o.Rooms, node: tg.node, got: harness.NewNumbered(l.topic(i%o.Rooms), "tick")}
		l.cs[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := l.topic(c.room)
			c.rc, errs[i] = wsclient.DialReconnecting(ctx, tg.url, wsclient.ReconnectOptions{
				Options:   wsclient.Options{Params: map[string]string{"user": c.user}, Buffer: 256},
				OnMessage: c.got.OnMessage,
			}, topic, map[string]string{"user": c.user})
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range l.cs {
			if c.rc != nil {
				_ = c.rc.Close()
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("load client %d: %v", i, err)
		}
	}
	go l.publisher(ctx)
	t.Cleanup(func() { l.stop() })

	// Flowing: every client has a broadcast.
	deadline := time.Now().Add(20 * time.Second)
	for _, c := range l.cs {
		for {
			n := len(c.got.Received())
			if n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("load: %s received no broadcast within 20 s", c.user)
			}
			time.Sleep(20 * time.Millisecond) // polling a map the client's goroutine fills
		}
	}
	l.pmu.Lock()
	l.from = l.last
	l.pmu.Unlock()
	return l
}

func (l *load) publisher(ctx context.Context) {
	defer close(l.done)
	api := &http.Client{Timeout: 5 * time.Second}
	tk := time.NewTicker(l.o.Tick)
	defer tk.Stop()
	for n := 1; n <= maxTicks; n++ {
		select {
		case <-l.stopc:
			return
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		base := l.o.PublishURL()
		pad := strings.Repeat("x", l.o.Pad)
		var round sync.WaitGroup
		for r := range l.o.Rooms {
			round.Add(1)
			go func() {
				defer round.Done()
				p := publish{start: time.Now()}
				body, _ := json.Marshal(map[string]any{"topic": l.topic(r), "event": "tick", "payload": map[string]any{"n": n, "pad": pad}})
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/broadcast", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+harness.APIKey)
				if res, err := api.Do(req); err == nil {
					p.ok, p.code = res.StatusCode == http.StatusAccepted, res.StatusCode
					res.Body.Close()
				}
				p.end = time.Now()
				l.pmu.Lock()
				l.pubs[[2]int{n, r}] = p
				l.pmu.Unlock()
			}()
		}
		round.Wait()
		l.pmu.Lock()
		l.last = n
		l.pmu.Unlock()
	}
}

// stop stops the publisher (once) and returns the last number published.
func (l *load) stop() int {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	<-l.done
	l.pmu.Lock()
	defer l.pmu.Unlock()
	return l.last
}

// now is the last number published so far.
func (l *load) now() int {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	return l.last
}

// awaitFlowing waits until every client connected now has received a
// broadcast numbered above n: each is joined and its node subscribed.
func (l *load) awaitFlowing(n int, within time.Duration) {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for _, c := range l.cs {
		for {
			ok := false
			for k := range c.got.Received() {
				if k > n {
					ok = true
					break
				}
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				l.t.Fatalf("load: %s (node %d, connected %v) received no broadcast after number %d within %v", c.user, c.node, c.rc.Connected(), n, within)
			}
			time.Sleep(20 * time.Millisecond) // polling a map the client's goroutine fills
		}
	}
}

// finish stops the publisher and waits until every client that was joined
// when the last broadcast was published has it (or 20 s).
func (l *load) finish() {
	l.t.Helper()
	last := l.stop()
	deadline := time.Now().Add(20 * time.Second)
	for _, c := range l.cs {
		l.pmu.Lock()
		p := l.pubs[[2]int{last, c.room}]
		l.pmu.Unlock()
		conns := c.rc.Conns()
		cur := conns[len(conns)-1]
		if !p.ok || !cur.Ended.IsZero() || cur.Joined.IsZero() || cur.Joined.After(p.start) {
			continue
		}
		for c.count(last) == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // polling a map the client's goroutine fills
		}
	}
}

// connected counts the clients holding a joined connection.
func (l *load) connected() int {
	n := 0
	for _, c := range l.cs {
		if c.rc.Connected() {
			n++
		}
	}
	return n
}

// awaitConnected waits until every client holds a joined connection.
func (l *load) awaitConnected(within time.Duration) time.Duration {
	l.t.Helper()
	began := time.Now()
	for l.connected() < len(l.cs) {
		if time.Since(began) > within {
			l.t.Fatalf("load: %d of %d clients connected after %v", l.connected(), len(l.cs), within)
		}
		time.Sleep(50 * time.Millisecond) // polling the clients' state
	}
	return time.Since(began)
}

// tally is what account found.
type tally struct{ owed, lost, dup int }

// account counts, for the broadcasts after l.from, the deliveries owed by
// the guarantees: to a client joined (on one connection) before the
// publish began and still connected slack after it returned, unless
// exempt says the guarantee did not hold for that client and publish (a
// Redis outage, a partition). Every broadcast received twice is a
// duplicate, exempt or not. It fails the test on a loss or a duplicate.
func (l *load) account(exempt func(c *loadClient, p publish) bool) tally {
	l.t.Helper()
	l.pmu.Lock()
	defer l.pmu.Unlock()
	var tl tally
	var examples []string
	for _, c := range l.cs {
		conns := c.rc.Conns()
		got := c.got.Received()
		for n, k := range got {
			if k > 1 {
				tl.dup++
				if len(examples) < 5 {
					examples = append(examples, fmt.Sprintf("%s received %d %d times", c.user, n, k))
				}
			}
		}
		for n := l.from + 1; n <= l.last; n++ {
			p := l.pubs[[2]int{n, c.room}]
			local := c.node != 0 && c.node == l.o.PublishNode && p.code == http.StatusServiceUnavailable
			if !(p.ok || local) || (exempt != nil && exempt(c, p)) {
				continue
			}
			if !wsclient.Covered(conns, p.start, p.end, slack) {
				continue
			}
			tl.owed++
			if got[n] == 0 {
				tl.lost++
				if len(examples) < 10 {
					examples = append(examples, fmt.Sprintf("%s (node %d) lost %d (published %s..%s, connections %+v)",
						c.user, c.node, n, p.start.Format("15:04:05.000"), p.end.Format("15:04:05.000"), conns))
				}
			}
		}
	}
	failed := 0
	for _, p := range l.pubs {
		if !p.ok {
			failed++
		}
	}
	l.t.Logf("load: %d broadcast rounds (%d accounted), %d publishes failed; %d deliveries owed, %d lost, %d duplicated",
		l.last, l.last-l.from, failed, tl.owed, tl.lost, tl.dup)
	if tl.lost > 0 || tl.dup > 0 {
		l.t.Errorf("load: %d owed broadcasts lost, %d received twice; e.g. %s", tl.lost, tl.dup, strings.Join(examples, "; "))
	}
	if tl.owed < len(l.cs) {
		l.t.Errorf("load: only %d deliveries owed to %d clients: the publisher or the clients did not run", tl.owed, len(l.cs))
	}
	return tl
}

// overlaps reports whether publish p ran at any time in [from, to].
func overlaps(p publish, from, to time.Time) bool {
	return !p.end.Before(from) && !p.start.After(to)
}

// nodeTargets is one target per node, straight to its published port.
func nodeTargets(cl *harness.Cluster, nodes ...int) []target {
	var out []target
	for _, i := range nodes {
		out = append(out, target{url: cl.Node(i).WSURL(), node: i})
	}
	return out
}

func timeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
