package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Position names one broadcast in a topic's history: the history's epoch
// and the broadcast's offset in it. Offsets start at 1 and grow by one per
// broadcast of the topic; the zero Offset names the point before the first
// broadcast. The epoch is chosen when a history is created and changes
// whenever the history is lost (a restarted store, an expired topic), so a
// position from a lost history can never be taken for one in the new one.
//
// The zero Position (no epoch) means "no position": the message belongs to
// a topic without history.
type Position struct {
	Epoch  string
	Offset uint64
}

// maxEpochLen bounds an epoch, so that a position always fits the one-byte
// lengths of the places that carry it (pubsub/redis's envelope records).
const maxEpochLen = 32

// IsZero reports whether p is "no position".
func (p Position) IsZero() bool { return p.Epoch == "" }

// String is the wire form, "<epoch>:<offset>" (PROTOCOL.md §12.1). It
// always contains a ':', so it is never mistaken for the integer strings
// clients use as refs of their own messages.
func (p Position) String() string {
	if p.IsZero() {
		return ""
	}
	return p.Epoch + ":" + strconv.FormatUint(p.Offset, 10)
}

// ErrBadPosition is returned (wrapped) by ParsePosition.
var ErrBadPosition = errors.New("pubsub: malformed history position")

// ParsePosition parses the wire form written by Position.String. The epoch
// is 1 to 32 characters of [A-Za-z0-9_-]; the offset a decimal uint64.
func ParsePosition(s string) (Position, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return Position{}, fmt.Errorf("%w: %q has no ':'", ErrBadPosition, s)
	}
	epoch, off := s[:i], s[i+1:]
	if !ValidEpoch(epoch) {
		return Position{}, fmt.Errorf("%w: bad epoch in %q", ErrBadPosition, s)
	}
	if off == "" || off[0] == '+' || (len(off) > 1 && off[0] == '0') {
		return Position{}, fmt.Errorf("%w: bad offset in %q", ErrBadPosition, s)
	}
	n, err := strconv.ParseUint(off, 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("%w: bad offset in %q", ErrBadPosition, s)
	}
	return Position{Epoch: epoch, Offset: n}, nil
}

// ValidEpoch reports whether e can be an epoch: 1 to 32 characters of
// [A-Za-z0-9_-].
func ValidEpoch(e string) bool {
	if e == "" || len(e) > maxEpochLen {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// HistoryOptions says how much history a topic keeps. The zero value keeps
// none: the topic behaves, and costs, as a topic of a PubSub without
// history.
type HistoryOptions struct {
	// Size is the number of most recent broadcasts retained. Stores may
	// keep a few more (Redis trims streams approximately), never fewer
	// while the history lives.
	Size int
	// TTL is how long a history lives after its topic's last broadcast.
	// A topic idle for TTL costs nothing: its history, epoch included, is
	// dropped, and its next broadcast starts a new epoch. Zero means
	// DefaultHistoryTTL.
	TTL time.Duration
}

// DefaultHistoryTTL is the TTL of HistoryOptions that name none.
const DefaultHistoryTTL = 5 * time.Minute

// Enabled reports whether o keeps any history.
func (o HistoryOptions) Enabled() bool { return o.Size > 0 }

// EffectiveTTL is o.TTL, or DefaultHistoryTTL when o names none.
func (o HistoryOptions) EffectiveTTL() time.Duration {
	if o.TTL <= 0 {
		return DefaultHistoryTTL
	}
	return o.TTL
}

// HistoryPolicy decides which topics keep history, and how much. It is
// called on every publish of a History, so it must be cheap and must
// answer the same for a topic every time (changing it while topics are
// live makes their histories start anew or stop).
type HistoryPolicy func(topic string) HistoryOptions

// HistoryQuery selects what ReadHistory returns.
type HistoryQuery struct {
	// Since, when not zero, asks for the broadcasts after it, oldest first:
	// what a client that saw Since has missed.
	Since Position
	// Last, when Since is zero, asks for the Last most recent broadcasts,
	// oldest first. Zero (with a zero Since) returns no messages, only Top.
	Last int
	// Limit caps the messages returned after Since (0: no cap beyond the
	// history's Size). The caller sees that more follow when the last
	// message returned is before Top.
	Limit int
}

// HistoryResult is what ReadHistory found.
type HistoryResult struct {
	// Messages are the selected broadcasts, oldest first, each with its
	// Pos. Their From is empty: who sent them no longer matters.
	Messages []*Message
	// Top is the position of the topic's newest broadcast at the time of
	// the read (Offset 0: none yet in this epoch). Everything after Top
	// reaches the topic's subscribers live.
	Top Position
}

// Why a read after a position cannot be complete. ReadHistory returns them
// wrapped, together with a HistoryResult whose Top is set, so the caller
// can go on from Top.
var (
	// ErrNoHistory: the topic keeps no history (HistoryPolicy).
	ErrNoHistory = errors.New("pubsub: topic has no history")
	// ErrEpochChanged: the position is from another epoch: the history it
	// belonged to was lost, or it never belonged to this topic.
	ErrEpochChanged = errors.New("pubsub: history epoch changed")
	// ErrPositionTooOld: broadcasts after the position were trimmed away.
	ErrPositionTooOld = errors.New("pubsub: position older than retained history")
	// ErrPositionAhead: the position is past the topic's newest broadcast,
	// so it was not given by this history.
	ErrPositionAhead = errors.New("pubsub: position ahead of history")
)

// History is implemented by the PubSubs that keep a per-topic history of
// broadcasts (pubsub/local in memory, pubsub/redis in Redis streams).
//
// Contract, on top of PubSub's, for the topics the policy gives history
// (every other topic behaves exactly as under PubSub alone):
//   - Every broadcast gets a Position atomically with its publication: the
//     offset is assigned, the message retained and the message published
//     as one step, so no reader of the history and no subscriber on any
//     node sees offsets in another order or with a hole that the other
//     saw filled.
//   - Each node's subscribers of the topic receive its broadcasts in
//     offset order, whichever node published them, with Message.Pos set
//     (except while a cluster still has nodes that cannot carry positions:
//     then Pos is zero, and the subscriber cannot tell what it missed).
//     Delivery may happen after Publish returns, on another goroutine.
//   - Delivery stays at-most-once: a subscriber can miss broadcasts (a lost
//     connection between nodes). It sees the hole as a jump in offsets or
//     a new epoch, and fills it with ReadHistory.
//   - A store that loses broadcasts it had published and then gives
//     their offsets again in the same epoch (pubsub/redis after a
//     failover to a stale replica) must not deliver the new broadcasts
//     under positions subscribers may hold: a node that notices moves the
//     history to a new epoch and delivers them with a position in an
//     epoch that no history has, so subscribers see a new epoch, not
//     duplicates.
//   - A subscriber excluded by Message.From that implements
//     ExcludedObserver is told of the message instead of receiving it,
//     with its Pos, which is zero when the message went out without one.
//   - ReadHistory is O(messages returned), not O(retained).
type History interface {
	PubSub
	// SetHistoryPolicy decides which topics keep history from now on.
	// nil keeps none (the default).
	SetHistoryPolicy(HistoryPolicy)
	// HistoryOptions is what the policy gives topic.
	HistoryOptions(topic string) HistoryOptions
	// PublishAt is Publish that also returns the position the broadcast
	// got (zero for a topic without history).
	PublishAt(ctx context.Context, m *Message) (Position, error)
	// ReadHistory returns retained broadcasts of topic (HistoryQuery). A
	// position that cannot be served returns one of the errors above,
	// wrapped, with the result's Top set; a store that cannot be reached
	// returns another error.
	ReadHistory(ctx context.Context, topic string, q HistoryQuery) (HistoryResult, error)
}

// ExcludedObserver is implemented by subscribers that follow positions. A
// message that names the subscriber in From is not delivered to it, but
// handed to Excluded, so that its last seen position moves past the
// message and the next one is not taken for a hole. That includes a
// message without a position (a topic without history, or one published
// while the cluster could not carry positions): it may still have taken
// an offset, which the subscriber must allow for as it would had the
// message been delivered.
type ExcludedObserver interface {
	Excluded(m *Message)
}

// HistoryCounter is implemented by the Histories that can tell the node how
// much history they hold, for its metrics; the node reads it at scrape
// time, so it must not wait on the store for long.
type HistoryCounter interface {
	HistoryStats() HistoryStats
}

// HistoryStats is a HistoryCounter's answer.
type HistoryStats struct {
	// Topics is the number of live histories this node holds or knows of.
	Topics int
	// Retained is the number of broadcasts those histories retain.
	Retained int
}
