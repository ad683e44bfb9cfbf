package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// historyState is the PubSub's part of pubsub.History. The history itself
// lives in Redis (history_script.go); a node keeps only the policy and
// counters.
type historyState struct {
	policy pubsub.PolicyHolder

	published atomic.Uint64 // broadcasts that got a position
	reads     atomic.Uint64 // ReadHistory calls that reached Redis
	read      atomic.Uint64 // messages they returned
	reloads   atomic.Uint64 // NOSCRIPT answers: the script sent again in full

	// known is what HistoryStats reports: the histories this node
	// published to within their TTL, and their newest offset. The
	// writers note each position Redis gives, in the order Redis gave
	// them, so it also serves to see a history go back at publish
	// (regress.go). Guarded by mu.
	mu        sync.Mutex
	known     map[string]knownHistory
	sweptSize int // len(known) after the last sweep
}

type knownHistory struct {
	epoch   string
	top     uint64 // the offset of the last position this node was given
	size    int
	expires time.Time
	// lost is epoch when a publish's reply showed it gone back (while
	// replies keep coming in it, the move to a new epoch has not run).
	lost string
}

// historyArgs are the keys and arguments of one historyPublish run.
type historyArgs struct {
	topic string
	opts  pubsub.HistoryOptions
	keys  []string
	args  []any
	size  int // bytes, for the writer's batch bound
}

var _ pubsub.History = (*PubSub)(nil)

// SetHistoryPolicy implements pubsub.History. Every node of a cluster
// must be given the same policy: a node delivers its own broadcasts of a
// topic with history from Redis's echo and not at once, and tells the two
// kinds of topics apart by the policy.
func (p *PubSub) SetHistoryPolicy(f pubsub.HistoryPolicy) {
	p.hist.policy.Set(f)
}

// HistoryOptions implements pubsub.History.
func (p *PubSub) HistoryOptions(topic string) pubsub.HistoryOptions {
	o, _ := p.historyOptions(topic)
	return o
}

// historyOptions is the policy's answer for topic, and whether it keeps
// history. Without a policy it costs one atomic load.
func (p *PubSub) historyOptions(topic string) (pubsub.HistoryOptions, bool) {
	return p.hist.policy.Options(topic)
}

// historyKeys returns the stream and meta keys of topic's history.
func (p *PubSub) historyKeys(topic string) []string {
	base := p.opt.Prefix + ":h:{" + topic + "}:"
	return []string{base + "s", base + "m"}
}

// Epochs: a random base per process and a counter, so that no two
// histories of a topic, created by any node at any time, share one (a
// client's position from a lost history must not be taken for one in
// the next). At most 13 + 1 + 13 characters of [0-9a-z-].
var (
	epochBase = strconv.FormatUint(rand.Uint64(), 36)
	epochSeq  atomic.Uint64
)

// newEpoch returns the epoch a script uses if it finds the history
// missing.
func newEpoch() string {
	return epochBase + "-" + strconv.FormatUint(epochSeq.Add(1), 36)
}

func ttlMillis(o pubsub.HistoryOptions) int64 {
	return max(1, o.EffectiveTTL().Milliseconds())
}

// PublishAt implements pubsub.History; see Publish.
func (p *PubSub) PublishAt(ctx context.Context, m *pubsub.Message) (pubsub.Position, error) {
	if p.closed.Load() {
		return pubsub.Position{}, pubsub.ErrClosed
	}
	if o, ok := p.historyOptions(m.Topic); ok {
		return p.publishHistory(ctx, m, o)
	}
	return pubsub.Position{}, p.Publish(ctx, m)
}

// publishHistory queues one run of historyPublish for the writer, in
// line with the node's PUBLISHes, and waits for the position. Nothing is
// delivered here: this node's subscribers get the broadcast from Redis,
// like every other node's, so that all of them see one offset order.
func (p *PubSub) publishHistory(ctx context.Context, m *pubsub.Message, o pubsub.HistoryOptions) (pubsub.Position, error) {
	if err := p.checkSizeExt(m.Topic, m.From, m.Event, m.Payload, maxPositionExt); err != nil {
		return pubsub.Position{}, err
	}
	now := time.Now()
	head := make([]byte, 0, envelopeSize(p.opt.NodeID, m.From, m.Event, nil))
	head = appendEnvelopeHead(head, p.opt.NodeID, now.UnixNano(), p.seq.Add(1), m.From, m.Event, m.Binary)
	// The stream keeps the position whatever the Gate says; the PUBLISH
	// carries it only when every live node reads an extension area.
	withPos := "0"
	if p.mayPos.mayWrite(p.Gate(), func() time.Time { return now }) {
		withPos = "1"
	}
	channel, sharded := p.topicChannel(m.Topic, now)
	publish := "p"
	if sharded {
		publish = "s"
	}
	req := &publishReq{
		channel: channel,
		hist: &historyArgs{
			topic: m.Topic,
			opts:  o,
			keys:  p.historyKeys(m.Topic),
			args:  []any{newEpoch(), ttlMillis(o), o.Size, channel, head, m.Payload, withPos, publish},
			size:  len(head) + len(m.Payload),
		},
		done: make(chan error, 1),
	}
	if err := p.roundTrip(ctx, m.Topic, now, req); err != nil {
		return pubsub.Position{}, err
	}
	p.hist.published.Add(1)
	return req.pos, nil
}

// note records that topic's history lives until now+TTL with pos as its
// newest broadcast, and returns what was known of it before (ok false:
// nothing). The writers call it with each position Redis gives, in the
// order Redis gave them (publisher.go, flush), so a position that is not
// past the one before in its epoch is the history going back, which the
// caller looks at (regress.go), and is recorded as the newest all the
// same. The map is swept when it has doubled since the last sweep, so it
// stays proportional to the histories this node published to within
// their TTL (past it a history starts a new epoch anyway).
func (h *historyState) note(topic string, pos pubsub.Position, o pubsub.HistoryOptions, now time.Time) (prev knownHistory, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.known == nil {
		h.known = make(map[string]knownHistory)
	}
	prev, ok = h.known[topic]
	if !ok && len(h.known) >= 2*h.sweptSize+64 {
		h.sweepLocked(now)
	}
	k := knownHistory{epoch: pos.Epoch, top: pos.Offset, size: o.Size, expires: now.Add(o.EffectiveTTL())}
	switch {
	case ok && prev.epoch == pos.Epoch && pos.Offset <= prev.top:
		k.lost = pos.Epoch
	case ok && prev.lost == pos.Epoch:
		k.lost = prev.lost
	}
	h.known[topic] = k
	return prev, ok
}

func (h *historyState) sweepLocked(now time.Time) {
	for t, k := range h.known {
		if !now.Before(k.expires) {
			delete(h.known, t)
		}
	}
	h.sweptSize = len(h.known)
}

var _ pubsub.HistoryCounter = (*PubSub)(nil)

// HistoryStats implements pubsub.HistoryCounter without asking Redis
// (counting the histories there would scan its keyspace at every
// scrape): Topics is the histories this node published to within their
// TTL, Retained the broadcasts they retain by their Size (Redis keeps a
// few more). Nodes that publish to one topic each count it; a history
// kept alive only by other nodes is not counted here.
func (p *PubSub) HistoryStats() pubsub.HistoryStats {
	h := &p.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweepLocked(time.Now())
	var st pubsub.HistoryStats
	for _, k := range h.known {
		st.Topics++
		st.Retained += int(min(k.top, uint64(k.size)))
	}
	return st
}

// historyReply reads historyPublish's {epoch, offset}.
func historyReply(cmd goredis.Cmder) (pubsub.Position, error) {
	c, ok := cmd.(*goredis.Cmd)
	if !ok {
		return pubsub.Position{}, fmt.Errorf("redis: history publish: unexpected command %T", cmd)
	}
	v, err := c.Slice()
	if err != nil {
		return pubsub.Position{}, fmt.Errorf("redis: history publish: %w", err)
	}
	if len(v) != 2 {
		return pubsub.Position{}, fmt.Errorf("redis: history publish: reply of %d elements", len(v))
	}
	epoch, ok1 := v[0].(string)
	top, ok2 := v[1].(int64)
	if !ok1 || !ok2 || !pubsub.ValidEpoch(epoch) || top < 1 {
		return pubsub.Position{}, fmt.Errorf("redis: history publish: malformed reply %v", v)
	}
	return pubsub.Position{Epoch: epoch, Offset: uint64(top)}, nil
}

// isNoScript reports a NOSCRIPT error: Redis lost its script cache (a
// restart, SCRIPT FLUSH, a failover to a replica that never saw it).
func isNoScript(err error) bool {
	return goredis.HasErrorPrefix(err, "NOSCRIPT")
}

// rerunNoScript runs again, with the script in full (EVAL, which also
// caches it), the history runs of a batch that Redis answered NOSCRIPT,
// and returns their indexes in live. NOSCRIPT means not run, so nothing
// runs twice. They run after the rest of the batch, in their order: a
// topic's broadcasts keep theirs unless another client reloads the
// script between two of them in one batch, a race that still gives the
// offsets in the order Redis published them (and the caller notes the
// positions in that order: the rest of the batch first).
func (p *PubSub) rerunNoScript(ctx context.Context, live []*publishReq, cmds []goredis.Cmder) []int {
	var again []int
	for i, r := range live {
		if r.hist != nil && i < len(cmds) && isNoScript(cmds[i].Err()) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return nil
	}
	p.hist.reloads.Add(1)
	rerun, _ := p.client.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
		for _, i := range again {
			historyPublish.Eval(ctx, pipe, live[i].hist.keys, live[i].hist.args...)
		}
		return nil
	})
	for j, i := range again {
		if j < len(rerun) {
			cmds[i] = rerun[j]
		}
	}
	return again
}

// ReadHistory implements pubsub.History with one run of a Redis script:
// one round trip, O(messages returned).
func (p *PubSub) ReadHistory(ctx context.Context, topic string, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	if p.closed.Load() {
		return pubsub.HistoryResult{}, pubsub.ErrClosed
	}
	o, ok := p.historyOptions(topic)
	if !ok {
		return pubsub.HistoryResult{}, fmt.Errorf("redis: history of %q: %w", topic, pubsub.ErrNoHistory)
	}
	mode, sinceEpoch, sinceOff, count := "top", "", "0", 0
	switch {
	case !q.Since.IsZero():
		mode, sinceEpoch, sinceOff, count = "since", q.Since.Epoch, strconv.FormatUint(q.Since.Offset, 10), max(q.Limit, 0)
	case q.Last > 0:
		// Not capped at Size: what Last shows retained must be what a
		// read since a position finds (the stream, trimmed
		// approximately, keeps some more).
		mode, count = "last", q.Last
	}
	ctx, cancel := context.WithTimeout(ctx, p.opt.PublishTimeout)
	defer cancel()
	keys := p.historyKeys(topic)
	args := []any{newEpoch(), ttlMillis(o), mode, sinceEpoch, sinceOff, count}
	cmd := historyRead.EvalSha(ctx, p.client, keys, args...)
	if isNoScript(cmd.Err()) {
		p.hist.reloads.Add(1)
		cmd = historyRead.Eval(ctx, p.client, keys, args...)
	}
	v, err := cmd.Slice()
	if err != nil {
		return pubsub.HistoryResult{}, fmt.Errorf("redis: history of %q: %w", topic, err)
	}
	p.hist.reads.Add(1)
	var (
		epoch      string
		top, first int64
		entries    []any
	)
	if len(v) == 4 {
		epoch, _ = v[0].(string)
		top, _ = v[1].(int64)
		first, _ = v[2].(int64)
		entries, _ = v[3].([]any)
	}
	if !pubsub.ValidEpoch(epoch) || top < 0 || first < 0 {
		return pubsub.HistoryResult{}, fmt.Errorf("redis: history of %q: malformed reply %v", topic, v)
	}
	res := pubsub.HistoryResult{Top: pubsub.Position{Epoch: epoch, Offset: uint64(top)}}
	if mode == "since" {
		// The script's rules, to name the reason it returned nothing.
		since := q.Since.Offset
		var why error
		switch {
		case q.Since.Epoch != epoch:
			why = pubsub.ErrEpochChanged
		case since > uint64(top):
			why = pubsub.ErrPositionAhead
		case since == uint64(top):
			return res, nil
		case first == 0 || uint64(first) > since+1:
			why = pubsub.ErrPositionTooOld
		}
		if why != nil {
			return res, fmt.Errorf("redis: history of %q since %s (top %s): %w", topic, q.Since, res.Top, why)
		}
	}
	res.Messages = make([]*pubsub.Message, 0, len(entries))
	for _, x := range entries {
		if m := p.historyMessage(topic, epoch, x); m != nil {
			res.Messages = append(res.Messages, m)
		}
	}
	if mode == "last" {
		slices.Reverse(res.Messages)
	}
	p.hist.read.Add(uint64(len(res.Messages)))
	return res, nil
}

var errHistoryEntry = errors.New("redis: history: malformed stream entry")

// historyMessage decodes one XRANGE entry, {id, {"e", envelope}}. An
// entry that does not decode, or that no client may receive, is skipped
// and counted as a decode error, as the live path drops it.
func (p *PubSub) historyMessage(topic, epoch string, x any) *pubsub.Message {
	entry, _ := x.([]any)
	var (
		id, data string
		ok       bool
	)
	if len(entry) == 2 {
		id, ok = entry[0].(string)
		fields, _ := entry[1].([]any)
		for i := 0; ok && i+1 < len(fields); i += 2 {
			if f, _ := fields[i].(string); f == "e" {
				data, ok = fields[i+1].(string)
			}
		}
	}
	off, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseUint(off, 10, 64)
	if !ok || data == "" || err != nil {
		p.decodeFailed(p.historyKeys(topic)[0], errHistoryEntry)
		return nil
	}
	env, err := decodeEnvelope(data)
	var payload []byte
	if err == nil {
		payload = []byte(env.payload)
		err = env.deliverable(topic, payload)
	}
	if err != nil {
		p.decodeFailed(p.historyKeys(topic)[0], err)
		return nil
	}
	pos := env.pos
	if pos.IsZero() {
		pos = pubsub.Position{Epoch: epoch, Offset: n}
	}
	return &pubsub.Message{Topic: topic, Event: env.event, Payload: payload, Binary: env.binary, Pos: pos}
}

// historyExt is what a topic's history adds to its envelopes at most.
func (p *PubSub) historyExt(topic string) int {
	if _, ok := p.historyOptions(topic); ok {
		return maxPositionExt
	}
	return 0
}
