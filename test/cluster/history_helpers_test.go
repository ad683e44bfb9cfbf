package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// History and recovery (issue 18), seen from the clients: a broadcast of a
// topic with history carries its position in its ref; a client rejoins
// with {"since": <the last position it saw>} and gets, after the join's ok
// reply ({"position", "recovered", "reason"}), what it missed, then the
// live broadcasts, each once and in order. The helpers below are the
// ledger those tests keep: what each publisher's API acknowledged (with
// the position it answered), what each client received (with the refs),
// and every join reply.

// historyRule is the nodes' --history: every room:* topic keeps 2,000
// broadcasts for 5 minutes.
const historyRule = "--history=room:*=2000,5m"

// tickEvent is the event of the numbered broadcasts.
const tickEvent = "tick"

// tick is the payload of a numbered broadcast: publisher and number, and
// padding for the tests that need big frames.
type tick struct {
	From string `json:"from"`
	N    int    `json:"n"`
	Pad  string `json:"pad,omitempty"`
}

// joinReply is one ok join reply as a recoverer saw it.
type joinReply struct {
	At        time.Time
	Conn      int    // connection (or, for long-poll, session) index
	Since     string // the since the join sent ("" for none)
	Position  string
	Recovered *bool // nil when the reply has no "recovered"
	Reason    string
}

// baseline reports whether the reply sets where the client starts again
// from: its first join, or one that did not recover.
func (j joinReply) baseline() bool { return j.Since == "" || j.Recovered == nil || !*j.Recovered }

// arrival is one numbered broadcast as received.
type arrival struct {
	From string
	N    int
	Pos  string // the frame's ref
	At   time.Time
}

// recoverer is one client's side of the ledger: it builds the join
// params (since = the last position seen) and records every join reply
// and every numbered broadcast of its topic. Its methods are the
// callbacks of wsclient.Reconnecting (OnJoinReply, OnMessage) or, for
// long-poll, lpclient's Observe; safe for concurrent use.
type recoverer struct {
	topic, user string

	mu    sync.Mutex
	last  string // guarded by mu
	since string // the since of the join in flight; guarded by mu
	// loose: the last join did not recover and named no position, so the
	// next position is taken as it comes (the server does the same).
	loose  bool
	joins  []joinReply
	got    []arrival
	errs   int // phx_error received
	jumps  []string
	others int // broadcasts of the topic (tick, presence_diff) without a position
}

func newRecoverer(topic, user string) *recoverer {
	return &recoverer{topic: topic, user: user}
}

// params is the join params function: {"user", "since"}.
func (r *recoverer) params() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.since = r.last
	p := map[string]string{"user": r.user}
	if r.last != "" {
		p["since"] = r.last
	}
	return p
}

// onJoinReply records an ok join reply of the topic. A reply that
// recovered leaves the last position alone (the missed broadcasts follow
// and move it up to the reply's position); any other one is where the
// client goes on from.
func (r *recoverer) onJoinReply(conn int, m wsclient.Message) {
	if m.Topic != r.topic || m.Status != "ok" {
		return
	}
	var p struct {
		Position  string `json:"position"`
		Recovered *bool  `json:"recovered"`
		Reason    string `json:"reason"`
	}
	_ = json.Unmarshal(m.Payload, &p)
	r.mu.Lock()
	defer r.mu.Unlock()
	j := joinReply{At: time.Now(), Conn: conn, Since: r.since, Position: p.Position, Recovered: p.Recovered, Reason: p.Reason}
	r.joins = append(r.joins, j)
	switch {
	case j.baseline() && p.Position != "":
		r.last, r.loose = p.Position, false
	case j.baseline():
		// The history could not tell (unavailable): the client keeps its
		// position for a later rejoin, and takes the next one as it
		// comes, as the server does.
		r.loose = true
	}
}

// onMessage records a numbered broadcast of the topic, follows the
// positions of every broadcast of the topic (presence_diff included, when
// the server gives it one) and checks that each follows the last one seen
// (a hole must never reach a client: the server ends the channel with
// phx_error instead), and counts phx_error.
func (r *recoverer) onMessage(m wsclient.Message) {
	if m.Err != nil || m.Topic != r.topic {
		return
	}
	switch m.Event {
	case channels.EventError:
		r.mu.Lock()
		r.errs++
		r.mu.Unlock()
		return
	case channels.EventReply:
		return
	}
	ref := ""
	if !m.Ref.IsNull() {
		ref = m.Ref.Text()
	}
	var p tick
	isTick := m.Event == tickEvent && json.Unmarshal(m.Payload, &p) == nil
	r.mu.Lock()
	defer r.mu.Unlock()
	if isTick {
		r.got = append(r.got, arrival{From: p.From, N: p.N, Pos: ref, At: time.Now()})
	}
	if ref == "" && (isTick || m.Event == channels.EventPresenceDiff) {
		// A broadcast without a position (PROTOCOL.md §12.6: published
		// while some node could not yet carry positions) may have taken
		// an offset all the same: the next position is taken as it
		// comes, as the server does. Counted, and printed by the tests.
		r.others++
		r.loose = true
		return
	}
	if _, err := pubsub.ParsePosition(ref); err != nil {
		return
	}
	if r.last != "" && !r.loose && !follows(r.last, ref) && len(r.jumps) < 1000 {
		r.jumps = append(r.jumps, m.Event+" "+r.last+" -> "+ref)
	}
	r.last, r.loose = ref, false
}

// observe is lpclient's Observe: join replies are the replies whose ref
// is their join_ref.
func (r *recoverer) observe(conn func() int) func(wsclient.Message) {
	return func(m wsclient.Message) {
		if m.Err == nil && m.Event == channels.EventReply && m.Topic == r.topic && m.Ref == m.JoinRef {
			r.onJoinReply(conn(), m)
			return
		}
		r.onMessage(m)
	}
}

// follows reports whether next is the position right after prev.
func follows(prev, next string) bool {
	p, err1 := pubsub.ParsePosition(prev)
	n, err2 := pubsub.ParsePosition(next)
	return err1 == nil && err2 == nil && p.Epoch == n.Epoch && n.Offset == p.Offset+1
}

// snapshot returns copies of what r recorded.
func (r *recoverer) snapshot() (joins []joinReply, got []arrival, errs int, jumps []string, others int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.joins), slices.Clone(r.got), r.errs, slices.Clone(r.jumps), r.others
}

// has reports whether r received number n of publisher from.
func (r *recoverer) has(from string, n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.got {
		if a.From == from && a.N == n {
			return true
		}
	}
	return false
}

// ack is one broadcast an API acknowledged.
type ack struct {
	Topic      string
	Pos        string // the API's {"position"}
	Start, End time.Time
}

// publisher posts numbered broadcasts (tick{From: name, N: n}) to its
// topics in turn through one node's HTTP API, number n to topic
// (n-1) mod len(topics), one a period on average. Each topic has its own
// lane, which posts its numbers one after another, so a topic's numbers
// are published in order while the topics' round trips overlap: the pace
// holds when a round trip takes longer than the period. A number the API did not
// acknowledge (202) is posted again, the same number, until it is: the
// ledger's promise is about delivery, so only acknowledged broadcasts are
// owed, each exactly once. A number with an attempt whose outcome is
// unknown (no answer, or a 5xx) may have been published twice, under two
// positions: ambiguous.
type publisher struct {
	name   string
	url    func() string // the API's base URL, asked before every attempt
	topics []string
	every  time.Duration
	pad    int
	hc     *http.Client

	mu        sync.Mutex
	acks      map[int]ack // guarded by mu
	ambiguous map[int]bool
	refused   int // attempts answered otherwise than 200 or 202, or failed
	last      int // the highest number acknowledged

	stop chan struct{}
	done chan struct{}
}

func newPublisher(name string, url func() string, topics []string, every time.Duration) *publisher {
	return &publisher{name: name, url: url, topics: topics, every: every,
		hc:   &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
		acks: map[int]ack{}, ambiguous: map[int]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
}

// start runs the publisher until finish or ctx's end.
func (p *publisher) start(ctx context.Context) *publisher {
	go p.run(ctx)
	return p
}

func (p *publisher) run(ctx context.Context) {
	defer close(p.done)
	var wg sync.WaitGroup
	lanes := len(p.topics)
	for first := 1; first <= lanes; first++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.lane(ctx, first, lanes)
		}()
	}
	wg.Wait()
}

// lane posts the numbers first, first+step, ... (one topic's), each once
// acknowledged, one every step periods, starting first-1 periods from
// now so that the lanes take turns.
func (p *publisher) lane(ctx context.Context, first, step int) {
	every := p.every * time.Duration(step)
	next := time.Now().Add(p.every * time.Duration(first-1))
	for n := first; ; n += step {
		topic := p.topics[(n-1)%len(p.topics)]
		for {
			select {
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(time.Until(next)):
			}
			a, ok, unsure := p.post(ctx, topic, n)
			p.mu.Lock()
			if ok {
				p.acks[n] = a
				p.last = max(p.last, n)
			} else {
				p.refused++
				p.ambiguous[n] = p.ambiguous[n] || unsure
			}
			p.mu.Unlock()
			if ok {
				// The pace restarts from now after a stall, without a burst.
				if next = next.Add(every); next.Before(time.Now()) {
					next = time.Now()
				}
				break
			}
			next = time.Now().Add(50 * time.Millisecond)
		}
	}
}

// post makes one attempt; unsure says whether the broadcast may have
// been published although it was not acknowledged.
func (p *publisher) post(ctx context.Context, topic string, n int) (a ack, ok, unsure bool) {
	pl := tick{From: p.name, N: n}
	if p.pad > 0 {
		pl.Pad = strings.Repeat("x", p.pad)
	}
	body, _ := json.Marshal(map[string]any{"topic": topic, "event": tickEvent, "payload": pl})
	a = ack{Topic: topic, Start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url()+"/api/broadcast", bytes.NewReader(body))
	if err != nil {
		return a, false, false
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+harness.APIKey)
	res, err := p.hc.Do(req)
	if err != nil {
		// A refused connection never reached a node.
		return a, false, !errors.Is(err, syscall.ECONNREFUSED)
	}
	data, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	res.Body.Close()
	a.End = time.Now()
	// 202, with the position for a topic with history.
	if res.StatusCode != http.StatusAccepted {
		return a, false, res.StatusCode >= 500
	}
	var r struct {
		Position string `json:"position"`
	}
	_ = json.Unmarshal(data, &r)
	a.Pos = r.Position
	return a, true, false
}

// finish stops the publisher (a number not yet acknowledged is given up)
// and returns the highest number acknowledged.
func (p *publisher) finish() int {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	p.hc.CloseIdleConnections()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// lastAcked is the highest number acknowledged so far.
// latency returns the median and the slowest acknowledged publish, and
// the acknowledged rate over the publisher's run: what the API's round
// trip cost while the test ran, and whether the pace was held.
func (p *publisher) latency() (median, slowest time.Duration, perSecond float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ds := make([]time.Duration, 0, len(p.acks))
	var first, last time.Time
	for _, a := range p.acks {
		ds = append(ds, a.End.Sub(a.Start))
		if first.IsZero() || a.Start.Before(first) {
			first = a.Start
		}
		if a.End.After(last) {
			last = a.End
		}
	}
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	if span := last.Sub(first); span > 0 {
		perSecond = float64(len(ds)) / span.Seconds()
	}
	return ds[len(ds)/2], ds[len(ds)-1], perSecond
}

func (p *publisher) lastAcked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// ledger returns copies of the acknowledgements and the ambiguous
// numbers.
func (p *publisher) ledger() (map[int]ack, map[int]bool, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.acks), maps.Clone(p.ambiguous), p.refused
}

// lastFor is the highest number acknowledged for topic (0 if none).
func (p *publisher) lastFor(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := 0
	for n, a := range p.acks {
		if a.Topic == topic && n > best {
			best = n
		}
	}
	return best
}

// tally is the count of a test's deliveries.
type tally struct {
	owed, received int
	lost           int // owed, never received, the client never told
	learned        int // owed, never received, but a join reply told the client (recovered false)
	dup            int // received twice under one position, or of a number published once
	pubDup         int // a number the publisher may have published twice, received under both positions
	reordered      int // received after a later number of the same publisher
	misplaced      int // received under another position than the API answered
	unpositioned   int // broadcasts (tick, presence_diff) received without a position (PROTOCOL.md §12.6)
	// bare: the numbered broadcasts received without a position although
	// the API answered one (the stream took it; the publishing node's
	// Gate had not yet opened, PROTOCOL.md §12.6), each once. Not
	// misplaced; a test says when they may happen.
	bare         map[bareTick]bool
	jumps        int // received with a position that does not follow the last one seen
	errs         int // phx_error received
	firstJoins   int
	recovered    int            // rejoins answered recovered true
	notRecovered map[string]int // rejoins answered recovered false, by reason
	examples     []string
}

func (t *tally) example(format string, args ...any) {
	if len(t.examples) < 8 {
		t.examples = append(t.examples, fmt.Sprintf(format, args...))
	}
}

// bareTick names a numbered broadcast: publisher and number.
type bareTick struct {
	From string
	N    int
}

// ok reports whether nothing was lost, doubled, reordered or misplaced
// and no hole reached a client.
func (t tally) ok() bool {
	return t.lost == 0 && t.dup == 0 && t.reordered == 0 && t.misplaced == 0 && t.jumps == 0
}

func (t tally) String() string {
	reasons := make([]string, 0, len(t.notRecovered))
	for _, k := range slices.Sorted(maps.Keys(t.notRecovered)) {
		reasons = append(reasons, fmt.Sprintf("%q×%d", k, t.notRecovered[k]))
	}
	return fmt.Sprintf("owed %d, received %d, lost %d, dup %d, reordered %d, misplaced %d, jumps %d, unpositioned broadcasts %d (numbered ones the API gave a position: %d); "+
		"learned losses %d, publisher re-sends received twice %d; phx_error %d; joins: first %d, recovered %d, not recovered %d %v",
		t.owed, t.received, t.lost, t.dup, t.reordered, t.misplaced, t.jumps, t.unpositioned, len(t.bare),
		t.learned, t.pubDup, t.errs, t.firstJoins, t.recovered, sumValues(t.notRecovered), reasons)
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// account counts what clients received against what pubs' APIs
// acknowledged. A client is owed every acknowledged broadcast of its
// topic after the position of a baseline join reply (its first, or one
// that did not recover) in that reply's epoch; a reply without a position
// falls back to time: broadcasts whose publish began after it. An owed
// broadcast not received is "learned" when a later join reply of the
// client said recovered false for a since before it in its epoch (the
// client was told what it cannot have), and lost otherwise.
func account(rs []*recoverer, pubs []*publisher) tally {
	t := tally{notRecovered: map[string]int{}, bare: map[bareTick]bool{}}
	type pubLedger struct {
		acks      map[int]ack
		ambiguous map[int]bool
	}
	ledgers := map[string]pubLedger{}
	for _, p := range pubs {
		acks, amb, _ := p.ledger()
		ledgers[p.name] = pubLedger{acks, amb}
	}
	for _, r := range rs {
		joins, got, errs, jumps, others := r.snapshot()
		t.errs += errs
		t.jumps += len(jumps)
		t.unpositioned += others
		if len(jumps) > 0 {
			t.example("%s saw positions jump: %v", r.user, jumps[:min(3, len(jumps))])
		}
		for i, j := range joins {
			switch {
			case i == 0 || j.Since == "":
				t.firstJoins++
			case j.Recovered != nil && *j.Recovered:
				t.recovered++
			default:
				t.notRecovered[j.Reason]++
			}
		}
		t.received += len(got)
		// Arrivals per publisher and number.
		type key struct {
			from string
			n    int
		}
		seen := map[key][]string{}
		highest := map[string]int{}
		for _, a := range got {
			k := key{a.From, a.N}
			seen[k] = append(seen[k], a.Pos)
			if len(seen[k]) > 1 {
				continue
			}
			if a.N < highest[a.From] {
				t.reordered++
				t.example("%s received %s %d after %d", r.user, a.From, a.N, highest[a.From])
			}
			highest[a.From] = max(highest[a.From], a.N)
			if l, ok := ledgers[a.From]; ok {
				if ak, ok := l.acks[a.N]; ok && ak.Pos != "" && a.Pos == "" {
					t.bare[bareTick{a.From, a.N}] = true
				} else if ok && !l.ambiguous[a.N] && ak.Pos != "" && a.Pos != ak.Pos {
					t.misplaced++
					t.example("%s received %s %d at %s, the API answered %s", r.user, a.From, a.N, a.Pos, ak.Pos)
				}
			}
		}
		for k, poss := range seen {
			if len(poss) < 2 {
				continue
			}
			distinct := slices.Compact(slices.Sorted(slices.Values(poss)))
			if len(distinct) == len(poss) && ledgers[k.from].ambiguous[k.n] {
				t.pubDup++
				continue
			}
			t.dup++
			t.example("%s received %s %d %d times, at %v", r.user, k.from, k.n, len(poss), poss)
		}
		// What was owed.
		for _, p := range pubs {
			l := ledgers[p.name]
			for _, n := range slices.Sorted(maps.Keys(l.acks)) {
				a := l.acks[n]
				if a.Topic != r.topic || !owed(joins, a) {
					continue
				}
				t.owed++
				if len(seen[key{p.name, n}]) > 0 {
					continue
				}
				if told(joins, a) {
					t.learned++
					continue
				}
				t.lost++
				t.example("%s lost %s %d (position %s, published %s..%s; joins %s)", r.user, p.name, n, a.Pos,
					a.Start.Format("15:04:05.000"), a.End.Format("15:04:05.000"), describeJoins(joins))
			}
		}
	}
	return t
}

// owed reports whether a client with these join replies must receive a.
func owed(joins []joinReply, a ack) bool {
	ap, aerr := pubsub.ParsePosition(a.Pos)
	for _, j := range joins {
		if !j.baseline() {
			continue
		}
		if j.Position == "" || aerr != nil {
			if a.Start.After(j.At) {
				return true
			}
			continue
		}
		jp, err := pubsub.ParsePosition(j.Position)
		if err == nil && jp.Epoch == ap.Epoch && ap.Offset > jp.Offset {
			return true
		}
	}
	return false
}

// told reports whether a join reply said recovered false for a since
// before a in a's epoch.
func told(joins []joinReply, a ack) bool {
	ap, err := pubsub.ParsePosition(a.Pos)
	if err != nil {
		return false
	}
	for _, j := range joins {
		if j.Since == "" || j.Recovered == nil || *j.Recovered {
			continue
		}
		sp, err := pubsub.ParsePosition(j.Since)
		if err == nil && sp.Epoch == ap.Epoch && sp.Offset < ap.Offset {
			return true
		}
	}
	return false
}

func describeJoins(joins []joinReply) string {
	var b strings.Builder
	for i, j := range joins {
		if i > 0 {
			b.WriteString("; ")
		}
		rec := "-"
		if j.Recovered != nil {
			rec = fmt.Sprint(*j.Recovered)
		}
		fmt.Fprintf(&b, "%s conn %d since %q -> %q recovered %s %q", j.At.Format("15:04:05.000"), j.Conn, j.Since, j.Position, rec, j.Reason)
	}
	return b.String()
}

// awaitCaughtUp waits until every client has received the last number
// each publisher had acknowledged for its topic, or fails the test.
func awaitCaughtUp(t testing.TB, rs []*recoverer, pubs []*publisher, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	lastFor := map[string]map[string]int{}
	for _, p := range pubs {
		lastFor[p.name] = map[string]int{}
		for _, topic := range p.topics {
			lastFor[p.name][topic] = p.lastFor(topic)
		}
	}
	for _, r := range rs {
		for _, p := range pubs {
			n := lastFor[p.name][r.topic]
			for n > 0 && !r.has(p.name, n) {
				if time.Now().After(deadline) {
					joins, _, _, _, _ := r.snapshot()
					t.Fatalf("%s never received %s %d, the last broadcast to %s; joins %s", r.user, p.name, n, r.topic, describeJoins(joins))
				}
				time.Sleep(20 * time.Millisecond) // polling what the client's goroutine records
			}
		}
	}
}

// freezer is a TCP proxy in the test process between clients and a node.
// Freeze stops it forwarding in both directions without closing anything,
// as a network that drops packets does; Cut then closes every connection
// (what the client's heartbeat timeout would end up doing) and forwards
// again for new ones.
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	thawed chan struct{} // closed while forwarding; guarded by mu
	conns  []net.Conn    // guarded by mu
}

func startFreezer(t testing.TB, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target, thawed: make(chan struct{})}
	close(f.thawed)
	t.Cleanup(func() {
		ln.Close()
		f.Cut()
	})
	go f.accept()
	return f
}

// WSURL is the WebSocket URL through the proxy.
func (f *freezer) WSURL() string { return "ws://" + f.ln.Addr().String() + "/socket/websocket" }

func (f *freezer) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", f.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, s)
		f.mu.Unlock()
		go f.pipe(c, s)
		go f.pipe(s, c)
	}
}

// pipe copies from src to dst, waiting while frozen before each read.
func (f *freezer) pipe(src, dst net.Conn) {
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 16<<10)
	for {
		f.mu.Lock()
		thawed := f.thawed
		f.mu.Unlock()
		<-thawed
		n, err := src.Read(buf)
		if n > 0 {
			f.mu.Lock()
			thawed = f.thawed
			f.mu.Unlock()
			<-thawed
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Freeze stops forwarding on every connection.
func (f *freezer) Freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.thawed = make(chan struct{})
}

// Cut closes every connection and forwards again.
func (f *freezer) Cut() {
	f.mu.Lock()
	conns := f.conns
	f.conns = nil
	select {
	case <-f.thawed:
	default:
		close(f.thawed)
	}
	f.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// histogram renders counts by key, for logs.
func histogram(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d", k, m[k])
	}
	return b.String()
}
