package redis

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/presence"
)

// List and presence_state: this node's entries from its table, the
// other nodes' from the topic's hash (one shared read, reads.go).

// row is one entry as List sorts them: its node and phx_ref are its
// hash field's two halves (substrings of a field read, this node's id and
// the entry's ref otherwise: a List builds no field for its own rows).
type row struct {
	t    int64
	node string
	ref  string
	key  string
	meta json.RawMessage
}

// List implements presence.Tracker: this node's entries from its own
// table (always current), the other nodes' from the topic's hash, keeping
// only nodes whose heartbeat is younger than DeadAfter by Redis's clock.
// It costs one Redis round trip, which concurrent Lists of the same
// topic share; the shared read always starts after this List was called,
// so it never returns what was true only before the call.
func (t *Tracker) List(ctx context.Context, topic string) (presence.State, error) {
	remote, local, err := t.rows(ctx, topic)
	if err != nil {
		return nil, err
	}
	state := make(presence.State, len(remote)+len(local))
	t.mergeRows(remote, local, state.Add)
	return state, nil
}

// AppendState implements presence.StateAppender: what List returns,
// written as a presence_state payload with nothing built in between (the
// rows come grouped by key, compareRows).
func (t *Tracker) AppendState(ctx context.Context, b []byte, topic string) ([]byte, error) {
	remote, local, err := t.rows(ctx, topic)
	if err != nil {
		return nil, err
	}
	w := presence.StateWriter{B: b}
	t.mergeRows(remote, local, w.Add)
	return w.Finish(), nil
}

// rows returns what List lists: the other nodes' rows (shared with other
// Lists: not to be changed) and this node's entries, each in compareRows
// order (pointers: a join lists its room, and sorting the entries
// themselves moved most of its bytes).
func (t *Tracker) rows(ctx context.Context, topic string) (remote []row, local []*entry, err error) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return nil, nil, presence.ErrClosed
	}
	if !t.aloneLive() {
		remote, err = t.reads.get(ctx, topic)
		if err != nil {
			return nil, nil, fmt.Errorf("presence/redis: list %s: %w", topic, err)
		}
	}
	t.mu.Lock()
	local = make([]*entry, 0, t.topicLen(topic))
	if tt := t.table[topic]; tt != nil {
		tt.each(func(e *entry) { local = append(local, e) })
	}
	if b := t.pending[topic]; b != nil {
		// The joins still in their window are in this List: a leave of
		// one of them must now be sent, not cancel it (addLeave).
		clear(b.joinIdx)
	}
	if p := t.paces[topic]; p != nil {
		p.room = len(remote) + len(local) // what the topic's diffs reach
	}
	t.mu.Unlock()
	slices.SortFunc(local, compareEntries)
	return remote, local, nil
}

// compareEntries is compareRows for this node's entries, whose node is
// the same.
func compareEntries(a, b *entry) int {
	if c := strings.Compare(a.key, b.key); c != 0 {
		return c
	}
	if c := cmp.Compare(a.t, b.t); c != 0 {
		return c
	}
	return strings.Compare(a.ref, b.ref)
}

// compareRowEntry is compareRows of r and this node's entry e.
func (t *Tracker) compareRowEntry(r *row, e *entry) int {
	return compareRows(*r, row{key: e.key, t: e.t, node: t.me, ref: e.ref})
}

// mergeRows hands add the rows of a and the entries of b, both in
// compareRows order, in that order: each key's entries together, in the
// order of their tracks.
func (t *Tracker) mergeRows(a []row, b []*entry, add func(key string, meta json.RawMessage)) {
	for i, j := 0, 0; i < len(a) || j < len(b); {
		if j == len(b) || i < len(a) && t.compareRowEntry(&a[i], b[j]) <= 0 {
			add(a[i].key, a[i].meta)
			i++
		} else {
			add(b[j].key, b[j].meta)
			j++
		}
	}
}

// compareRows orders rows as presence_state groups them: by key, then by
// time of the track or update, then by node and ref, which together are
// unique. compareEntries and compareRowEntry order alike.
func compareRows(a, b row) int {
	if c := strings.Compare(a.key, b.key); c != 0 {
		return c
	}
	if c := cmp.Compare(a.t, b.t); c != 0 {
		return c
	}
	if c := strings.Compare(a.node, b.node); c != 0 {
		return c
	}
	return strings.Compare(a.ref, b.ref)
}

// readRemote reads the entries of topic that other live nodes hold, in
// List's order: one round trip, a pipeline of HGETALL of the topic and,
// unless a List read them less than liveFor ago, of the nodes hash and of
// Redis's clock (clockScript). Lists share it through t.reads.
func (t *Tracker) readRemote(ctx context.Context, topic string) ([]row, error) {
	live := t.cachedLive()
	pipe := t.client.Pipeline()
	hcmd := pipe.HGetAll(ctx, t.topicKey(topic))
	var ncmd *goredis.MapStringStringCmd
	var tcmd *goredis.Cmd
	if live == nil {
		ncmd = pipe.HGetAll(ctx, t.nodesKey)
		tcmd = pipe.Eval(ctx, clockScript, []string{t.nodesKey})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	if live == nil {
		now, _ := tcmd.Int64()
		live = t.liveNodes(ncmd.Val(), now)
		t.cacheLive(live)
	}
	rows := make([]row, 0, len(hcmd.Val()))
	for f, v := range hcmd.Val() {
		node, ref, ok := splitField(f)
		if !ok || node == t.me || !live[node] {
			continue
		}
		s, ok := t.decodeStored(topic, f, v)
		if !ok {
			continue
		}
		rows = append(rows, row{t: s.T, node: node, ref: ref, key: s.Key, meta: s.Meta})
	}
	slices.SortFunc(rows, compareRows)
	return rows, nil
}

// liveFor is how long a List's reading of the live nodes serves the next
// Lists: short next to DeadAfter (seconds), so a dead node's entries
// outlive its detection by that much at most.
func (t *Tracker) liveFor() time.Duration { return min(250*time.Millisecond, t.opt.DeadAfter/8) }

// cachedLive returns the live nodes read less than liveFor ago, or nil.
func (t *Tracker) cachedLive() map[string]bool {
	t.liveMu.Lock()
	defer t.liveMu.Unlock()
	if t.live == nil || time.Since(t.liveAt) >= t.liveFor() {
		return nil
	}
	return t.live
}

// aloneLive reports whether the live nodes, as last read, are this one
// at most: a read of the topic would then keep none of its rows (readRemote
// skips this node's own and those of nodes not live), so a List does
// without it. A node that came up since that reading is hidden for as
// long either way (liveFor).
func (t *Tracker) aloneLive() bool {
	live := t.cachedLive()
	return live != nil && len(live) <= 1 && (len(live) == 0 || live[t.me])
}

// cacheLive keeps live, just read, for the next Lists. The map is never
// written after this, so Lists share it.
func (t *Tracker) cacheLive(live map[string]bool) {
	t.liveMu.Lock()
	t.live, t.liveAt = live, time.Now()
	t.liveMu.Unlock()
}

// forgetLive drops the cached live nodes, so that the next List reads
// them: they are known to be stale (a diff came from a node they hold for
// dead), or the List is a repair, which replaces its clients' views and so
// must not hide a node that came back within liveFor.
func (t *Tracker) forgetLive() {
	t.liveMu.Lock()
	t.live = nil
	t.liveMu.Unlock()
}

// liveNodes returns the nodes whose heartbeat (ms) is within DeadAfter of
// now (Redis's clock). Nodes absent from the hash are not live.
func (t *Tracker) liveNodes(nodes map[string]string, now int64) map[string]bool {
	live := make(map[string]bool, len(nodes))
	for n, v := range nodes {
		if hb, err := strconv.ParseInt(v, 10, 64); err == nil && now-hb <= t.opt.DeadAfter.Milliseconds() {
			live[n] = true
		}
	}
	return live
}

// splitField splits "<node>/<ref>"; refs never contain '/'.
func splitField(f string) (node, ref string, ok bool) {
	i := strings.LastIndexByte(f, '/')
	if i <= 0 {
		return "", "", false
	}
	return f[:i], f[i+1:], true
}
