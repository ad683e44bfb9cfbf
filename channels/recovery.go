package channels

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// History and recovery (PROTOCOL.md §12). When the endpoint's PubSub is a
// pubsub.History and gives a topic history, every broadcast of the topic
// carries a Position, which its frame shows the client as the ref. A join
// of such a topic:
//
//  1. subscribes, as every join does; broadcasts delivered from then on
//     are held until the reply is out, each with its position;
//  2. reads the history (readRecovery): what followed the client's
//     "since", the last "history" broadcasts, or only the newest
//     position;
//  3. replies ok with the application's response plus "position",
//     "recovered" and, when the client's request could not be served,
//     "reason";
//  4. sends the replayed broadcasts, paced by what the client takes
//     (replay.go), then the held frames, dropping those the replay
//     already covered (flushJoinLocked).
//
// Subscribing before reading is what makes the seam exact: a broadcast
// published before the read is in the history, one published after it
// arrives live, and one published in between is both, which its position
// tells apart.
//
// From then on each ChannelSocket follows its topic's positions (last, in
// joinRare, guarded by ChannelSocket.mu, the lock deliver already takes):
// a position at or before the last one is a duplicate and dropped; the
// next one is delivered; anything else (a skipped offset, another epoch)
// is a hole the channel cannot fill without losing messages. The channel
// then fails as a crashed one does: phx_error to the client, which
// rejoins with "since" and so recovers, and the channel ends with
// ReasonHistoryGap. Topics without history carry no positions and take
// none of these paths.

// historyGapReply is the payload of the phx_error that fails a channel
// whose broadcasts cannot go on without a hole (PROTOCOL.md §12.6).
var historyGapReply = []byte(`{"reason":"history_gap"}`)

// historyReadTimeout bounds the history read of a join, which holds up the
// socket's read path as a Join callback does.
const historyReadTimeout = 5 * time.Second

// recoveryReasons are the reasons of a join answered "recovered": false,
// as sent to the client (PROTOCOL.md §12) and as the keys of
// Stats.RecoveriesIncomplete.
var recoveryReasons = [...]string{
	reasonEpochChanged: "epoch changed",
	reasonTooOld:       "position too old",
	reasonAhead:        "position ahead",
	reasonInvalid:      "invalid position",
	reasonNoHistory:    "no history",
	reasonUnavailable:  "history unavailable",
}

const (
	reasonEpochChanged = iota
	reasonTooOld
	reasonAhead
	reasonInvalid
	reasonNoHistory
	reasonUnavailable
	reasonNone = -1
)

// readReason is the reason a failed history read gives the client, or
// reasonNone for an error that is not about the position (a store that
// could not be read).
func readReason(err error) int {
	switch {
	case errors.Is(err, pubsub.ErrEpochChanged):
		return reasonEpochChanged
	case errors.Is(err, pubsub.ErrPositionTooOld):
		return reasonTooOld
	case errors.Is(err, pubsub.ErrPositionAhead):
		return reasonAhead
	case errors.Is(err, pubsub.ErrNoHistory):
		return reasonNoHistory
	}
	return reasonNone
}

// RecoveryReason is the reason a join reply gives (PROTOCOL.md §12.4) for
// an error of pubsub.History.ReadHistory: "epoch changed", "position too
// old", "position ahead" or "no history"; "" for any other error.
func RecoveryReason(err error) string {
	if r := readReason(err); r != reasonNone {
		return recoveryReasons[r]
	}
	return ""
}

// RecoveriesIncomplete returns, per reason sent to clients ("epoch
// changed", "position too old", "position ahead", "invalid position", "no
// history", "history unavailable"), how many joins of topics with history
// could not serve what the client asked for. Every reason is present.
func (s *Stats) RecoveriesIncomplete() map[string]uint64 {
	m := make(map[string]uint64, len(recoveryReasons))
	for i, r := range recoveryReasons {
		m[r] = s.recoveriesIncomplete[i].Load()
	}
	return m
}

// heldFrame is a frame held back until the join reply is out, or a
// replayed broadcast. m is set for a broadcast with a position, which
// flushJoinLocked checks against the positions already sent; the other
// frames (pushes, broadcasts of topics without history) always pass.
type heldFrame struct {
	f   Frame
	m   *pubsub.Message
	how deliverHow
	// unpositioned marks a broadcast without a position (m is nil): when it
	// goes out, the join accepts a step forward in positions (loosenPositionLocked).
	unpositioned bool
}

// deliverHow is what delivering a broadcast with a position to a channel
// amounts to, once its position has been accepted.
type deliverHow uint8

const (
	howFrame     deliverHow = iota // send f
	howIntercept                   // hand m to HandleOut
	howExcluded                    // nothing: the channel sent it (ExcludedObserver)
	howSkip                        // nothing: the socket's serializer cannot carry it
)

// held prepares the delivery of m, encoding it outside c.mu as deliver
// does for a broadcast without position.
func (c *ChannelSocket) held(m *pubsub.Message, excluded bool) heldFrame {
	h := heldFrame{m: m, how: howExcluded}
	if excluded {
		return h
	}
	if c.intercepts != nil && slices.Contains(*c.intercepts, m.Event) {
		h.how = howIntercept
		return h
	}
	f, ok := c.frameFor(m)
	if !ok {
		h.how = howSkip // the position moves on all the same
		return h
	}
	h.f, h.how = f, howFrame
	return h
}

// deliverAt delivers a broadcast with a position (deliver, excluded).
func (c *ChannelSocket) deliverAt(m *pubsub.Message, excluded bool) {
	h := c.held(m, excluded)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateJoining:
		c.holdLocked(h)
	case stateJoined:
		c.advanceLocked(h)
	}
}

// excluded is pubsub.ExcludedObserver's Excluded (subscriber): a
// broadcast_from of this join was not delivered to it, but its position
// still moves past it, so that the next broadcast is not taken for a hole.
func (c *ChannelSocket) excluded(m *pubsub.Message) {
	if m.Pos.IsZero() {
		c.loosenPosition() // as deliver does for one it sends
		return
	}
	c.deliverAt(m, true)
}

// advanceLocked delivers h if its position is the next one, drops it if
// it was already delivered, and fails the channel on a hole. The first
// position a channel sees is taken as it comes: a join that could not
// learn where the history stood goes on from there. Called with c.mu held
// and c.state joined.
func (c *ChannelSocket) advanceLocked(h heldFrame) {
	p, last := h.m.Pos, c.last
	switch {
	case last.IsZero():
	case p.Epoch == last.Epoch && p.Offset <= last.Offset:
		return // a duplicate: delivered already, live or replayed
	case p.Epoch == last.Epoch && (p.Offset == last.Offset+1 || c.loose):
	default:
		c.gapLocked(last, p)
		return
	}
	c.last, c.loose = p, false
	c.emitLocked(h)
}

// emitLocked delivers h without looking at its position. Intercepted
// events go to the outbox under c.mu, so that they keep their order with
// the positions accepted (locksordering.txt: ChannelSocket.mu before
// Socket.outMu).
func (c *ChannelSocket) emitLocked(h heldFrame) {
	switch h.how {
	case howFrame:
		c.sock.sendFrame(h.f)
	case howIntercept:
		c.sock.deliverOut(c, h.m)
	}
}

// gapLocked fails a channel whose broadcasts have a hole: phx_error now,
// so that the client rejoins (with "since", it recovers the hole), and
// nothing more of this join reaches the client. Ending the channel needs
// Socket.cb, which a broadcaster must never wait for (locksordering.txt),
// so a goroutine does it. Called with c.mu held.
func (c *ChannelSocket) gapLocked(last, got pubsub.Position) {
	c.state = stateBroken
	c.sock.ep.stats.HistoryGaps.Add(1)
	c.sock.ep.log.Info("channels: hole in a channel's broadcasts, failing the channel so that the client recovers",
		"topic", c.Topic(), "socket", c.sock.name(), "last", last.String(), "got", got.String())
	c.sendFinal(EventError, historyGapReply)
	go c.sock.endBroken(c)
}

// endBroken ends a channel failed by gapLocked, unless it has ended
// otherwise meanwhile (a new join of the topic, the connection's close).
func (s *Socket) endBroken(ch *ChannelSocket) {
	s.cb.Lock()
	defer s.cb.Unlock()
	s.terminate(ch, ReasonHistoryGap)
}

// flushJoinLocked sends, right after the join reply of a join with
// nothing to replay, or at the end of a replay (replay.go), the frames
// held during the join, dropping those already delivered. Called with
// c.mu held and c.state just set to joined; last is where the channel's
// positions stand (zero: unknown, and for a topic without history, whose
// held frames all pass as they always did).
func (c *ChannelSocket) flushJoinLocked(last pubsub.Position, held []heldFrame) {
	if !last.IsZero() {
		c.last = last
	}
	for _, h := range held {
		if c.state != stateJoined {
			return // failed by a hole: nothing more goes out
		}
		if h.m == nil {
			if h.unpositioned {
				c.loosenPositionLocked()
			}
			c.sock.sendFrame(h.f)
			continue
		}
		c.advanceLocked(h)
	}
}

// loosenPosition is loosenPositionLocked for a caller without c.mu.
func (c *ChannelSocket) loosenPosition() {
	c.mu.Lock()
	c.loosenPositionLocked()
	c.mu.Unlock()
}

// loosenPositionLocked is what a broadcast without a position does to a
// join that follows its topic's positions. Such a broadcast was published
// by a node that could not carry its position (one whose Gate had not yet
// heard that every node reads positions, or a node of an older release)
// and may have taken an offset in the history all the same: the next
// position of the same epoch can then be past last+1 without any
// broadcast having been lost. The join accepts that one step forward
// (advanceLocked) rather than fail on a hole that is none; what it gives
// up is the detection of a real hole across that step. It keeps last: a
// later position at or before it is still a duplicate, and one of another
// epoch still fails the channel, because a new epoch means the history
// was lost (Redis restarted empty), which the client must be told even
// when the first broadcast of the new epoch went out without a position.
// Called with c.mu held.
func (c *ChannelSocket) loosenPositionLocked() {
	if !c.last.IsZero() {
		c.loose = true
	}
}

// recovery is what a join of a topic with history found in the history.
type recovery struct {
	replay    []heldFrame     // the broadcasts to replay, oldest first: the first page of them
	last      pubsub.Position // the reply's position: replayed up to it, live after it; zero: unknown
	asked     joinAsk
	recovered bool
	reason    int // index in recoveryReasons, or reasonNone
}

// joinAsk is what a join's params asked of the history.
type joinAsk uint8

const (
	askNothing joinAsk = iota // neither since nor history: only the position
	askSince                  // since, well-formed or not
	askHistory                // history, well-formed or not
)

// readRecovery reads the history for a join of ch's topic, after its
// Subscribe: nil when the topic keeps no history, so that such a join is
// exactly what it always was.
func (s *Socket) readRecovery(ch *ChannelSocket, params Payload) *recovery {
	h, ok := s.ep.cfg.PubSub.(pubsub.History)
	if !ok {
		return nil
	}
	topic := ch.Topic()
	opts := h.HistoryOptions(topic)
	if !opts.Enabled() {
		return nil
	}
	rec := &recovery{reason: reasonNone}
	q, asked, bad := recoveryQuery(params, opts.Size)
	rec.asked = asked
	since := asked == askSince && !bad
	if since {
		// The first page; the replay reads the rest as the client takes
		// it (replay.go).
		q.Limit = replayPage
	}
	if bad {
		// Refusing the join would make the client retry the same params
		// forever; it joins, told why nothing was replayed, and the read
		// learns only the newest position.
		rec.reason = reasonInvalid
	}
	ctx, cancel := context.WithTimeout(context.Background(), historyReadTimeout)
	res, err := h.ReadHistory(ctx, topic, q)
	cancel()
	switch {
	case err == nil:
		if !consistent(q, since, res) {
			s.ep.log.Warn("channels: history read returned broadcasts out of sequence; nothing replayed", "topic", topic)
			rec.reason = reasonUnavailable
			res = pubsub.HistoryResult{}
		}
	case readReason(err) != reasonNone:
		rec.reason = readReason(err)
	default:
		s.ep.log.Warn("channels: history read failed; the join goes on without recovery", "topic", topic, "err", err)
		rec.reason = reasonUnavailable
		res = pubsub.HistoryResult{} // Top too: nothing known
	}
	if err != nil {
		res.Messages = nil // never a replay from the wrong place
	}
	rec.last = res.Top
	if n := len(res.Messages); n > 0 && res.Messages[n-1].Pos.Offset < res.Top.Offset && (!since || n < q.Limit) {
		// The read stopped short of the top, and not for its limit:
		// trimmed meanwhile. (consistent saw the messages in sequence.)
		rec.last = res.Messages[n-1].Pos
		if since && rec.reason == reasonNone {
			rec.reason = reasonTooOld
		}
	}
	if since && rec.reason == reasonNone {
		rec.recovered = true
	}
	if asked == askNothing {
		// A plain join is told its position, nothing else: it asked for
		// nothing that could fail (a store error is logged above).
		rec.reason = reasonNone
	}
	rec.replay = ch.heldAll(res.Messages)
	st := &s.ep.stats
	if rec.recovered {
		st.RecoveriesComplete.Add(1)
	}
	if rec.reason != reasonNone {
		st.recoveriesIncomplete[rec.reason].Add(1)
	}
	return rec
}

// recoveryQuery reads a join's params (PROTOCOL.md §12.3): {"since":
// "<position>"} asks for what followed a position, {"history": N} for the
// last N broadcasts (at most size); a null one counts as absent, and
// "since" wins over "history". Without either the query learns only the
// newest position. bad reports a since or history whose value is not one.
func recoveryQuery(params Payload, size int) (q pubsub.HistoryQuery, asked joinAsk, bad bool) {
	if params.Binary || len(params.Data) == 0 || params.Data[0] != '{' {
		return q, askNothing, false
	}
	var p map[string]json.RawMessage
	if json.Unmarshal(params.Data, &p) != nil {
		return q, askNothing, false
	}
	if raw := p["since"]; raw != nil && string(raw) != "null" {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return q, askSince, true
		}
		pos, err := pubsub.ParsePosition(s)
		if err != nil {
			return q, askSince, true
		}
		q.Since = pos
		return q, askSince, false
	}
	if raw := p["history"]; raw != nil && string(raw) != "null" {
		// Non-negative integers only: 5, not "5", -1, 5.0 or 5e0.
		n, err := strconv.ParseUint(string(raw), 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange):
			n = uint64(size)
		case err != nil:
			return q, askHistory, true
		}
		q.Last = int(min(n, uint64(size)))
		return q, askHistory, false
	}
	return q, askNothing, false
}

// consistent checks a successful read against its query before anything
// is replayed or "recovered" said: broadcasts of Top's epoch, in sequence,
// none past Top; for a since join, starting right after since; for the
// last N, at most N, ending at Top.
func consistent(q pubsub.HistoryQuery, since bool, res pubsub.HistoryResult) bool {
	prev := pubsub.Position{}
	if since {
		if res.Top.Epoch != q.Since.Epoch || res.Top.Offset < q.Since.Offset {
			return false
		}
		prev = q.Since
	} else if n := len(res.Messages); n > q.Last || n > 0 && res.Messages[n-1].Pos != res.Top {
		return false
	}
	for i, m := range res.Messages {
		p := m.Pos
		if p.Epoch != res.Top.Epoch || p.Offset > res.Top.Offset || (i > 0 || since) && p.Offset != prev.Offset+1 {
			return false
		}
		prev = p
	}
	return true
}

// amendReply adds the recovery's keys to a join's ok response
// (PROTOCOL.md §12.4): "position", the position everything after which
// follows, null when the history could not tell; "recovered" for a since
// join, and for a history join that could not be served; "reason" with
// "recovered": false. A response that is not a JSON object (binary,
// an array, a string) is left as it is: there is nowhere to put them.
// A key of the application's with the same name comes first in the
// object, so clients, which keep the last of duplicate keys, see ours.
func (rec *recovery) amendReply(data []byte, binary bool) []byte {
	if binary {
		return data
	}
	t := bytes.TrimSpace(data)
	if len(t) < 2 || t[0] != '{' || t[len(t)-1] != '}' {
		return data
	}
	body := bytes.TrimSpace(t[1 : len(t)-1])
	out := make([]byte, 0, len(t)+96)
	out = append(out, t[:len(t)-1]...)
	if len(body) > 0 {
		out = append(out, ',')
	}
	out = append(out, `"position":`...)
	out = wireAppendPosRef(out, rec.last)
	if rec.asked == askSince || rec.reason != reasonNone {
		out = append(out, `,"recovered":`...)
		out = strconv.AppendBool(out, rec.recovered)
	}
	if rec.reason != reasonNone {
		out = append(out, `,"reason":`...)
		out = appendJSONString(out, recoveryReasons[rec.reason])
	}
	return append(out, '}')
}
