package channels

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// The replay of a join with history (PROTOCOL.md §12.5), paced by what the
// client takes.
//
// A client closed as a slow consumer missed at least what overflowed its
// outbound queue; sent in one burst, its recovery would overflow the new
// connection's queue the same way, on every rejoin. So, after the join
// reply, the replay sends the missed broadcasts frame by frame, and
// before each one, when the connection's backlog (BacklogConn) has reached
// half its bound, waits until the client has taken it down to a quarter.
// The other half is left to the socket's other traffic. The history is
// read a page at a time (replayPage, Since the last broadcast sent), so a
// recovery of a whole history (up to 100,000 broadcasts) holds one page.
//
// Meanwhile the channel is still joining: live broadcasts and pushes are
// held as during the join callback, and the held list is bounded too
// (holdLocked). When it fills, the broadcasts with a position are dropped
// from it: the history has them, and the replay reads on until it has
// caught up with a read made after the last drop, whose top the held
// broadcasts then follow without a hole (a broadcast is retained before
// it is delivered, pubsub.History). Frames without a position (pushes)
// cannot be read back: when they alone fill half the bound, the replay is
// cut. A cut replay (also: its deadline, the history trimmed or lost
// under it) fails the channel as a hole in live delivery does (§12.6):
// phx_error, and the client, which has moved its position with every
// replayed broadcast it took, rejoins from there and recovers the rest.
//
// The replay runs in the join, under the socket's callback lock s.cb: the
// socket's other callbacks and the client's next messages (heartbeats
// included) wait for it, as they wait for any Join callback. That is one
// client waiting for its own recovery; replayTimeout keeps it shorter than
// the clients' own timeouts.

const (
	// replayPage is how many broadcasts a replay reads from the history
	// at a time.
	replayPage = 512
	// replayTimeout bounds a replay: less than phoenix.js's heartbeat
	// interval (30 s), which a heartbeat waiting behind the replay must
	// not miss, and than its long-poll POST timeout (20 s), since a
	// long-poll POST is answered after the frames it carried are handled.
	replayTimeout = 15 * time.Second
	// Without a BacklogConn the held frames are bounded as WebSocket's
	// default queue is.
	defaultHeldMax      = 1024
	defaultHeldMaxBytes = 4 << 20
)

// errReplayCut is why a replay ended early when the held frames
// overflowed.
var errReplayCut = errors.New("channels: frames held during the replay overflowed")

// heldAll prepares the delivery of replayed broadcasts.
func (c *ChannelSocket) heldAll(ms []*pubsub.Message) []heldFrame {
	hs := make([]heldFrame, 0, len(ms))
	for _, m := range ms {
		hs = append(hs, c.held(m, false))
	}
	return hs
}

// holdLocked holds a frame back while the channel is joining; during a
// replay, within its bound (see above). Called with c.mu held.
func (c *ChannelSocket) holdLocked(h heldFrame) {
	r := c.rareLocked()
	if r.overflow {
		return // the replay is being cut: nothing more goes out
	}
	r.pending = append(r.pending, h)
	if !r.replaying {
		return
	}
	r.heldBytes += len(h.f.Data)
	if len(r.pending) < r.heldMax && r.heldBytes <= r.heldMaxBytes {
		return
	}
	keep, bytes := r.pending[:0], 0
	for _, x := range r.pending {
		if x.m == nil {
			keep = append(keep, x)
			bytes += len(x.f.Data)
		}
	}
	clear(r.pending[len(keep):])
	r.pending, r.heldBytes = keep, bytes
	r.dropped++
	if 2*len(keep) >= r.heldMax || 2*bytes > r.heldMaxBytes {
		r.overflow = true
		r.pending, r.heldBytes = nil, 0
	}
}

// pacer decides when the next replayed frame may be sent.
type pacer struct {
	bc BacklogConn // nil: the Conn cannot be watched; nothing waits
}

// room waits until a frame of n bytes may be queued: at once while the
// backlog is below half its bounds, else until it is down to a quarter.
// A frame that might not fit beside half a queue waits for an empty one,
// which takes any frame. (Bytes are counted as the transport counts them;
// long-poll counts a frame's JSON-string encoding, at most 6n+3 bytes.)
func (p pacer) room(ctx context.Context, n int) error {
	if p.bc == nil {
		return nil
	}
	frames, bytes, maxFrames, maxBytes := p.bc.Backlog()
	if maxFrames <= 0 {
		maxFrames = int(^uint(0) >> 2)
	}
	if maxBytes <= 0 {
		maxBytes = int(^uint(0) >> 2)
	}
	if 6*n+3 > maxBytes/2 {
		if frames == 0 {
			return nil
		}
		return p.bc.WaitBacklog(ctx, 0, 0)
	}
	if 2*frames < maxFrames && 2*bytes < maxBytes {
		return nil
	}
	return p.bc.WaitBacklog(ctx, maxFrames/4, maxBytes/4)
}

// settle waits, before the held frames are flushed at once, until they
// fit: the backlog down to a quarter of its bounds (they are at most a
// quarter, holdLocked).
func (p pacer) settle(ctx context.Context) error {
	if p.bc == nil {
		return nil
	}
	_, _, maxFrames, maxBytes := p.bc.Backlog()
	if maxFrames <= 0 || maxBytes <= 0 {
		return nil
	}
	return p.bc.WaitBacklog(ctx, maxFrames/4, maxBytes/4)
}

// replay sends rec's broadcasts and those that follow in the history, up
// to where the held frames take over, then flushes those and makes the
// channel joined. Called with s.cb held, after the join reply, with
// c.state joining. It reports whether the channel is joined; if not, it
// has ended (the replay was cut), or the connection is closing.
func (s *Socket) replay(ch *ChannelSocket, rec *recovery) bool {
	ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
	defer cancel()
	var p pacer
	heldMax, heldMaxBytes := defaultHeldMax, defaultHeldMaxBytes
	if bc, ok := s.conn.(BacklogConn); ok {
		p.bc = bc
		if _, _, f, b := bc.Backlog(); f > 0 && b > 0 {
			heldMax, heldMaxBytes = f, b
		}
	}
	ch.mu.Lock()
	r := ch.rareLocked()
	r.replaying = true
	// A quarter of the queue, so that the flush at the end fits beside a
	// backlog settled to a quarter (settle); an eighth of its bytes, for
	// long-poll's encoding of them.
	r.heldMax, r.heldMaxBytes = max(heldMax/4, 2), max(heldMaxBytes/8, 1)
	r.heldBytes = 0
	for _, h := range r.pending {
		r.heldBytes += len(h.f.Data)
	}
	// target: where the held frames take over, the top of a read made
	// after their last drop (gen); zero while not known.
	gen, target := r.dropped, rec.last
	ch.mu.Unlock()

	page, sent := rec.replay, pubsub.Position{}
	for {
		for _, h := range page {
			if err := p.room(ctx, len(h.f.Data)); err != nil {
				return s.replayEnded(ch, sent, err)
			}
			ch.mu.Lock()
			if r.overflow {
				ch.mu.Unlock()
				return s.replayEnded(ch, sent, errReplayCut)
			}
			ch.emitLocked(h)
			ch.mu.Unlock()
			sent = h.m.Pos
			s.ep.stats.Replayed.Add(1)
		}
		page = nil
		ch.mu.Lock()
		if r.dropped != gen {
			gen, target = r.dropped, pubsub.Position{}
		}
		ch.mu.Unlock()
		if !target.IsZero() && sent.Offset >= target.Offset {
			if err := p.settle(ctx); err != nil {
				return s.replayEnded(ch, sent, err)
			}
			ch.mu.Lock()
			if r.overflow {
				ch.mu.Unlock()
				return s.replayEnded(ch, sent, errReplayCut)
			}
			if r.dropped == gen {
				pending := r.pending
				r.pending, r.replaying, r.heldBytes = nil, false, 0
				ch.state = stateJoined
				ch.flushJoinLocked(sent, pending)
				ch.mu.Unlock()
				return true
			}
			gen, target = r.dropped, pubsub.Position{}
			ch.mu.Unlock()
		}
		q := pubsub.HistoryQuery{Since: sent, Limit: replayPage}
		res, err := s.readPage(ctx, ch.Topic(), q)
		if err != nil {
			return s.replayEnded(ch, sent, err)
		}
		ch.mu.Lock()
		if r.dropped != gen {
			gen, target = r.dropped, pubsub.Position{}
		} else if target.IsZero() {
			target = res.Top // no drop since the read began
		}
		ch.mu.Unlock()
		page = ch.heldAll(res.Messages)
	}
}

// readPage reads one page of a replay, checked as the join's first read
// is (consistent).
func (s *Socket) readPage(ctx context.Context, topic string, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	h := s.ep.cfg.PubSub.(pubsub.History) // readRecovery found it one
	rctx, cancel := context.WithTimeout(ctx, historyReadTimeout)
	res, err := h.ReadHistory(rctx, topic, q)
	cancel()
	if err != nil {
		return res, err
	}
	if !consistent(q, true, res) {
		return res, errors.New("channels: history read returned broadcasts out of sequence")
	}
	return res, nil
}

// replayEnded ends a replay that could not finish. On a closing
// connection nothing is sent: handleClose, waiting for s.cb, ends the
// channel. Otherwise the channel fails as on a hole (gapLocked):
// phx_error, and the client rejoins from the last broadcast it took.
// Called with s.cb held; it reports false for replay.
func (s *Socket) replayEnded(ch *ChannelSocket, sent pubsub.Position, err error) bool {
	ch.mu.Lock()
	if r := ch.rare; r != nil {
		r.pending, r.replaying, r.heldBytes = nil, false, 0
	}
	if errors.Is(err, ErrConnClosed) {
		ch.mu.Unlock()
		return false
	}
	ch.state = stateBroken
	ch.mu.Unlock()
	s.ep.stats.ReplaysCut.Add(1)
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("channels: replay not taken within %v: %w", replayTimeout, err)
	}
	s.ep.log.Info("channels: replay cut short, failing the channel so that the client rejoins from where it got to",
		"topic", ch.Topic(), "socket", s.name(), "sent", sent.String(), "err", err)
	ch.sendFinal(EventError, historyGapReply)
	s.terminate(ch, ReasonHistoryGap)
	return false
}
