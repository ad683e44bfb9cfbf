package hostile

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"
)

// The soak's shape and the node's stated bounds (default flags).
const (
	soakFor  = 60 * time.Second // every attack at once, well-behaved clients throughout
	slotFor  = 10 * time.Second // each memory attack's slot, one after the other from the start
	settleIn = 15 * time.Second // after the soak: the last messages reach the well-behaved clients

	heapBound = 256 << 20 // go_memstats_heap_inuse_bytes, the peak over the soak
	fdBound   = 2000      // the node's open descriptors, the peak
	// heapCeiling stops the attacks: past it the node has failed already,
	// and the machine's memory is shared.
	heapCeiling = 3 << 30
)

func attacks() []*attack {
	return []*attack{
		// In slots, in this order: the long-poll ones first, since the
		// session flood waits for them (see sessionFlood); fragments
		// last, since its fillers keep the node's budget for unfinished
		// messages full to the end, which large join frames meet too.
		{name: "lp-pings", what: "long-poll: 4 sessions post 60 KB pings at the allowed rate, never poll; then 2 read a poll, 2 never read theirs", slot: true, longPoll: true, run: lpPings, check: lpPingsCheck},
		{name: "presence-pin", what: "long-poll: 20 sessions with 500 KB user names join and leave a room, never poll", slot: true, longPoll: true, run: presencePin},
		{name: "join-refs", what: "WebSocket: 3 sockets join 100 topics each with 200 KB join_refs", slot: true, run: joinRefs},
		{name: "fragments", what: "WebSocket: 200 sockets hold an unfinished 960 KiB fragmented message, pinging; then a socket every 100 ms begins a 6 KiB one and never ends it", slot: true, run: fragments, check: fragmentsCheck},
		// All the time.
		{name: "presence-churn", what: "WebSocket: 300 KB user names (connect and join params) join/leave two well-behaved rooms at 25/s", run: presenceChurn, check: presenceCheck},
		{name: "invalid-utf8", what: "non-UTF-8 bytes into well-behaved rooms: WS V1/V2 text and binary pushes, typing, join and connect user names, long-poll lines, /api/broadcast", run: invalidUTF8, check: invalidUTF8Check},
		{name: "api", what: "forged presence_diff via /api/broadcast, API bodies without or with text/plain Content-Type, long-poll CORS to a foreign origin", run: apiAbuse, check: apiAbuseCheck},
		{name: "idle-slow", what: "300 idle keep-alive connections and 300 requests sending their body a byte every 2 s", run: idleAndSlow, check: idleAndSlowCheck},
		{name: "session-flood", what: "once the long-poll slots are over, one address opens up to 12,000 long-poll sessions per 16 s (32 at a time); a newcomer from another address (long-poll every 250 ms, WebSocket every second)", run: sessionFlood, check: sessionFloodCheck},
		{name: "request-lines", what: "WebSocket upgrades and long-poll opens with a 1 MiB request line, one a second", run: hugeRequestLines, check: hugeRequestLinesCheck},
		{name: "malformed-v2", what: "a new V2 socket a second sends an array with too few elements", run: malformedV2, check: malformedV2Check},
		{name: "ping-floods", what: "2 sockets send WebSocket pings (2,000/s) never reading pongs; 2 send heartbeats at 500/s", run: pingFloods, check: pingFloodsCheck},
	}
}

// TestSoak runs every attack of issue 16 at once against one node with
// its default flags while well-behaved clients exchange messages. The
// well-behaved clients must lose nothing and stay connected, the node's
// heap and descriptors stay under heapBound and fdBound, and each
// attack's own expectation hold; the figures are printed either way.
func TestSoak(t *testing.T) {
	began := time.Now()
	var phases []string
	phase := func(name string, since *time.Time) {
		phases = append(phases, fmt.Sprintf("%s %.1f s", name, time.Since(*since).Seconds()))
		*since = time.Now()
	}
	mark := began
	n := startNode(t)
	cs := newConns()
	t.Cleanup(cs.closeAll)

	attackCtx, stopAttacks := context.WithCancel(context.Background())
	defer stopAttacks()
	var tripped atomic.Bool
	mon := startMonitor(n, heapCeiling, func() { tripped.Store(true); stopAttacks() })
	t.Cleanup(mon.Stop)

	setup, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	wb, err := startWellBehaved(setup, n.addr)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wb.close)
	e := &env{addr: n.addr, cs: cs, mon: mon, wb: wb, lpSlotsDone: make(chan struct{})}
	phase("set-up", &mark)

	as := selected(t, attacks())
	reports := map[*attack]*report{}
	for _, a := range as {
		reports[a] = newReport(a)
	}
	soak, endSoak := context.WithTimeout(attackCtx, soakFor)
	defer endSoak()
	var running sync.WaitGroup
	for _, a := range as {
		if a.slot {
			continue
		}
		running.Add(1)
		go func() {
			defer running.Done()
			a.run(soak, e, reports[a])
		}()
	}
	running.Add(1)
	go func() {
		defer running.Done()
		fragmentsHold(soak, e)
	}()
	lastLP := -1
	for i, a := range as {
		if a.slot && a.longPoll {
			lastLP = i
		}
	}
	if lastLP < 0 {
		close(e.lpSlotsDone)
	}
	for i, a := range as {
		if !a.slot || soak.Err() != nil {
			continue
		}
		r := reports[a]
		from, at := mon.last().live, mon.elapsed()
		slot, endSlot := context.WithTimeout(soak, slotFor)
		a.run(slot, e, r)
		<-slot.Done()
		endSlot()
		r.heapFrom = from
		r.heapRise = maxRise(from, mon.since(at))
		switch {
		case r.engaged.Load() == 0:
			r.note("the node took nothing of it: the rise in its slot is other attacks'")
		case r.heapRise > slotHeapBound:
			r.fail("the live heap rose %.0f MiB in its slot (bound %.0f MiB)", mib(r.heapRise), mib(slotHeapBound))
		}
		if i == lastLP {
			close(e.lpSlotsDone)
		}
	}
	if soak.Err() != nil && lastLP >= 0 {
		select {
		case <-e.lpSlotsDone:
		default:
			close(e.lpSlotsDone)
		}
	}
	<-soak.Done()
	phase("soak", &mark)
	if !waitTimeout(&running, 20*time.Second) {
		t.Log("some attackers were still running 20 s after the soak")
	}
	phase("attackers stopping", &mark)

	wb.finish(settleIn)
	v := wb.verdict()
	phase("last messages", &mark)
	for _, a := range as {
		if a.check != nil {
			a.check(e, reports[a])
		}
	}
	drain := &report{name: "cross-site-drain", what: "POST /api/drain as a cross-site form (urlencoded, text/plain, multipart) from a foreign Origin, last", vals: map[string]int64{}}
	crossSiteDrain(e, drain)
	phase("drain and checks", &mark)
	cpu := cpuSeconds(n.pid())
	mon.Stop()
	all := mon.since(0)
	alive := n.alive()

	// The figures, then the verdicts.
	var b strings.Builder
	fmt.Fprintf(&b, "\nhostile soak: one node with default flags, %s of every attack at once, %d well-behaved clients in %d rooms\n", soakFor, v.clients, wbRooms)
	peakHeap, peakFds, peakRSS := peak(all, heapOf), peak(all, fdsOf), peak(all, rssOf)
	fmt.Fprintf(&b, "node: heap in use peak %.0f MiB (bound %.0f), RSS peak %.0f MiB, descriptors peak %.0f (bound %d), CPU %.0f s; attacker connections peak %d\n",
		mib(peakHeap), mib(heapBound), mib(peakRSS), peakFds, fdBound, cpu, cs.peak.Load())
	fmt.Fprintf(&b, "node heap in use (MiB) every 5 s: %s\n", series(all, 5, func(s sample) string {
		if s.heap == 0 {
			return "?"
		}
		return fmt.Sprintf("%.0f", mib(s.heap))
	}))
	fmt.Fprintf(&b, "node live heap at the last GC (MiB) every 5 s: %s\n", series(all, 5, func(s sample) string {
		if s.live == 0 {
			return "?"
		}
		return fmt.Sprintf("%.0f", mib(s.live))
	}))
	fmt.Fprintf(&b, "node descriptors every 5 s: %s\n", series(all, 5, func(s sample) string { return fmt.Sprint(s.fds) }))
	if last := lastScrape(all); last != nil {
		hits := limitHits(last)
		var parts []string
		for _, k := range sortedKeys(hits) {
			parts = append(parts, fmt.Sprintf("%s=%.0f", k, hits[k]))
		}
		fmt.Fprintf(&b, "node limit hits: %s\n", strings.Join(parts, " "))
	}
	fmt.Fprintf(&b, "well-behaved: %d clients, %d disconnected; pushes %d sent, %d acked, %d refused; messages %d of %d delivered (%d missing), %d out of order; presence lists wrong: %d; frames a browser closes on: %d, with U+FFFD: %d, undecodable: %d\n",
		v.clients, v.lost, v.sent, v.acked, v.refused, v.delivered, v.expected, v.missing, v.orderErrs, v.presenceWrong, v.invalid, v.replaced, v.badFrames)
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "attack\tverdict\tfigures")
	rows := append(append([]*report(nil), mapReports(as, reports)...), drain)
	for _, r := range rows {
		verdict := "held"
		if f := r.failed(); len(f) > 0 {
			verdict = "FAILED"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", r.name, verdict, r.figures())
	}
	_ = w.Flush()
	for _, r := range rows {
		for _, f := range r.failed() {
			fmt.Fprintf(&b, "  %s: %s\n", r.name, f)
		}
		r.mu.Lock()
		for _, nt := range r.notes {
			fmt.Fprintf(&b, "  %s (note): %s\n", r.name, nt)
		}
		r.mu.Unlock()
	}
	fmt.Fprintf(&b, "took %.0f s: %s\n", time.Since(began).Seconds(), strings.Join(phases, ", "))
	figures.Lock()
	figures.text = b.String()
	figures.Unlock()
	t.Log(b.String())

	if !alive {
		t.Errorf("the node died during the soak:\n%s", n.out)
	}
	if tripped.Load() {
		t.Errorf("the node's heap passed the %d MiB safety ceiling: the attacks were stopped early", heapCeiling>>20)
	}
	if peakHeap > heapBound {
		t.Errorf("node heap in use peaked at %.0f MiB, bound %.0f MiB", mib(peakHeap), mib(heapBound))
	}
	if peakFds > fdBound {
		t.Errorf("node descriptors peaked at %.0f, bound %d", peakFds, fdBound)
	}
	if v.lost > 0 {
		t.Errorf("%d well-behaved clients were disconnected: %s", v.lost, strings.Join(v.lostWhy, "; "))
	}
	if v.missing > 0 {
		t.Errorf("well-behaved clients: %d messages missing (a client the node closed misses what its room sent afterwards)", v.missing)
	}
	if v.orderErrs > 0 {
		t.Errorf("well-behaved clients: %d messages out of order (first: %s)", v.orderErrs, v.firstOrder)
	}
	if v.refused > 0 {
		t.Errorf("well-behaved pushes: %d refused (first: %s)", v.refused, v.firstRefusal)
	}
	if v.acked+v.refused != v.sent {
		t.Errorf("well-behaved pushes: %d sent, %d answered", v.sent, v.acked+v.refused)
	}
	if v.presenceWrong > 0 {
		t.Errorf("%d well-behaved clients' presence lists are wrong: %s", v.presenceWrong, strings.Join(v.presenceWhy, "; "))
	}
	if v.invalid > 0 || v.badFrames > 0 {
		t.Errorf("well-behaved clients received %d text frames that are not UTF-8 (a browser closes the socket) and %d undecodable frames", v.invalid, v.badFrames)
	}
	for _, r := range rows {
		for _, f := range r.failed() {
			t.Errorf("%s: %s", r.name, f)
		}
	}
}

// selected keeps the attacks named in $HOSTILE_ONLY (comma-separated),
// to look at a few alone; all of them without it.
func selected(t *testing.T, as []*attack) []*attack {
	only := os.Getenv("HOSTILE_ONLY")
	if only == "" {
		return as
	}
	var out []*attack
	for _, a := range as {
		if slices.Contains(strings.Split(only, ","), a.name) {
			out = append(out, a)
		}
	}
	t.Logf("HOSTILE_ONLY: %d of %d attacks", len(out), len(as))
	return out
}

func mapReports(as []*attack, reports map[*attack]*report) []*report {
	out := make([]*report, 0, len(as))
	for _, a := range as {
		out = append(out, reports[a])
	}
	return out
}

func lastScrape(ss []sample) map[string]float64 {
	for i := len(ss) - 1; i >= 0; i-- {
		if ss[i].metrics != nil {
			return ss[i].metrics
		}
	}
	return nil
}

// maxRise is the largest rise of the live heap in a slot: the highest
// reading minus the lowest one before it (from the slot's start on), so
// that memory an earlier attack releases meanwhile does not hide it.
func maxRise(from float64, ss []sample) float64 {
	low, rise := from, 0.0
	for _, s := range ss {
		if s.live == 0 {
			continue // /metrics did not answer
		}
		low = min(low, s.live)
		rise = max(rise, s.live-low)
	}
	return rise
}

// series shows every step-th sample.
func series(ss []sample, step int, f func(sample) string) string {
	var parts []string
	for i := 0; i < len(ss); i += step {
		parts = append(parts, f(ss[i]))
	}
	return strings.Join(parts, " ")
}

// waitTimeout waits for wg up to d and reports whether it finished.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
