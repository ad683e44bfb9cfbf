package hostile

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// env is what every attack gets: the node, the attackers' connections, the
// monitor and the well-behaved clients (whose observations some attacks'
// verdicts read).
type env struct {
	addr string
	cs   *conns
	mon  *monitor
	wb   *wellBehaved
	// lpSlotsDone is closed when the last slot attack that opens long-poll
	// sessions has ended.
	lpSlotsDone chan struct{}
}

// attack is one kind of hostile client. run goes on until ctx ends (the
// end of the soak) or until its own work is done; a slot attack's run is
// given the slot's context and leaves what it pinned held (its
// connections stay open until the end). check, if set, runs after the
// soak, for verdicts that need the end state.
type attack struct {
	name string
	what string
	src  string // its own loopback address
	slot bool
	// longPoll marks a slot attack that opens long-poll sessions: the
	// session flood waits for it.
	longPoll bool
	run      func(ctx context.Context, e *env, r *report)
	check    func(e *env, r *report)
}

// report is an attack's figures and verdict.
type report struct {
	name, what string
	slot       bool

	mu       sync.Mutex
	order    []string         // guarded by mu
	vals     map[string]int64 // guarded by mu
	notes    []string         // guarded by mu
	fails    []string         // guarded by mu
	heapRise float64          // slot attacks: the live heap's largest rise in the slot (maxRise)
	heapFrom float64
	// engaged counts what the node took of a slot attack (a socket
	// holding fragments, a session buffering pings...): with none, the
	// node turned it away at the door and its slot's rise is others'.
	engaged atomic.Int64
}

func newReport(a *attack) *report {
	return &report{name: a.name, what: a.what, slot: a.slot, vals: map[string]int64{}}
}

func (r *report) add(key string, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.vals[key]; !ok {
		r.order = append(r.order, key)
	}
	r.vals[key] += n
}

func (r *report) inc(key string) { r.add(key, 1) }

// most keeps the largest value seen under key.
func (r *report) most(key string, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.vals[key]; !ok {
		r.order = append(r.order, key)
	}
	r.vals[key] = max(r.vals[key], n)
}

func (r *report) get(key string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.vals[key]
}

// note keeps a line for the table (the first few distinct ones).
func (r *report) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := fmt.Sprintf(format, args...)
	if len(r.notes) < 6 && !slices.Contains(r.notes, n) {
		r.notes = append(r.notes, n)
	}
}

func (r *report) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fails = append(r.fails, fmt.Sprintf(format, args...))
}

func (r *report) failed() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.fails...)
}

func (r *report) figures() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	if r.slot {
		parts = append(parts, fmt.Sprintf("live heap +%.0f MiB in its slot (from %.0f MiB)", mib(r.heapRise), mib(r.heapFrom)))
	}
	for _, k := range r.order {
		parts = append(parts, fmt.Sprintf("%s %d", k, r.vals[k]))
	}
	return strings.Join(parts, ", ")
}

// statusClass keys an HTTP answer for the figures: "2xx", "413", "net
// error"...
func statusClass(code int, err error) string {
	switch {
	case err != nil:
		return "no answer"
	case code >= 200 && code < 300:
		return "2xx"
	default:
		return fmt.Sprint(code)
	}
}

// drainBody reads and closes an answer's body, returning its size.
func drainBody(resp *http.Response) int64 {
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return n
}

// v2Frame writes a V2 client array with the strings quoted (as JSON) and
// payload as given, raw bytes included.
func v2Frame(joinRef, ref, topic, event string, payload []byte) []byte {
	q := func(s string) []byte {
		if s == "" {
			return []byte("null")
		}
		b, _ := json.Marshal(s)
		return b
	}
	out := []byte{'['}
	for _, f := range [][]byte{q(joinRef), q(ref), q(topic), q(event)} {
		out = append(append(out, f...), ',')
	}
	return append(append(out, payload...), ']')
}

// replyStatus reads a V2 reply frame: its ref and status ("" when the
// frame is not a reply).
func replyStatus(frame []byte) (ref, status string) {
	var arr []json.RawMessage
	if json.Unmarshal(frame, &arr) != nil || len(arr) != 5 || string(arr[3]) != `"phx_reply"` {
		return "", ""
	}
	_ = json.Unmarshal(arr[1], &ref)
	var p struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(arr[4], &p)
	return ref, p.Status
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
