package presence

import "time"

// Pacing of presence_diffs, shared by the trackers.
//
// A diff goes to every subscriber of its topic: one frame, one write on
// each of their sockets. Sent one per change, a join storm into a room of
// n costs n deliveries per join, n² over the room's filling, and those
// writes were most of a node's CPU in a storm of joins into rooms of 100
// (BENCHMARKS.md, "Presence join storms"). So a topic sends at most one
// diff per window, carrying every change made meanwhile.
//
// The window's floor grows with the room (DiffWindow): a diff costs what
// the room holds. Above it the window adapts to the topic's traffic
// (AdaptWindow): a busy topic's diffs should each carry a change per
// DeliveriesPerChange members at least, so that a change costs about that
// many deliveries however big the room; a window whose diff fell short
// doubles, up to the ceiling, and one whose diff carried twice that
// halves.
const (
	// WindowPerMember is what each entry of a topic adds to the least
	// time between two of its diffs.
	WindowPerMember = 10 * time.Millisecond
	// DefaultMaxCoalesce is Local's widest window: what a member of a
	// big busy room may wait to see a change. In a storm of joins into
	// rooms of 100 on one node (BENCHMARKS.md) the windows reach it, and
	// the diffs a join costs fall with it: 500ms left 18 frames written
	// per join, 1s 7.5, 2s 6.8 (two of them the join reply and the
	// presence_state).
	DefaultMaxCoalesce = 2 * time.Second
	// DeliveriesPerChange is how many members a busy topic's diff may
	// reach per change it carries before its window widens.
	DeliveriesPerChange = 4
)

// DiffWindow returns the least time between two diffs of a topic that
// holds members entries: WindowPerMember each, but at least lo and at
// most hi.
func DiffWindow(members int, lo, hi time.Duration) time.Duration {
	w := time.Duration(members) * WindowPerMember
	return min(max(w, lo), hi)
}

// AdaptWindow returns a topic's next window after a diff of changes
// changes to a room of members: w doubled when the diff reached more than
// DeliveriesPerChange members per change, halved when it reached fewer
// than half that, and never outside [DiffWindow(members, lo, hi), hi].
// It returns 0 for the floor, which follows the room as it changes.
func AdaptWindow(w time.Duration, changes, members int, lo, hi time.Duration) time.Duration {
	floor := DiffWindow(members, lo, hi)
	w = max(w, floor)
	switch {
	case changes*DeliveriesPerChange < members:
		w *= 2
	case changes*DeliveriesPerChange >= 2*members:
		w /= 2
	}
	if w = min(w, hi); w <= floor {
		return 0
	}
	return w
}
