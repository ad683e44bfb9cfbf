package pubsub

import (
	"sync"
	"testing"
	"time"
)

func pos(epoch string, off uint64) Position { return Position{Epoch: epoch, Offset: off} }

// noted reads topic's note with a generous maxAge.
func noted(r *Registry, topic string) (Position, uint64, bool) {
	return r.NotedTop(topic, time.Hour)
}

// TestTopNotesFollowDispatches: a topic's note is the last position
// dispatched, or a read's Top noted with no dispatch since; what may
// have taken an offset unseen forgets it.
func TestTopNotesFollowDispatches(t *testing.T) {
	var r Registry
	s := &nopSub{id: "s"}
	if _, _, ok := noted(&r, "t"); ok {
		t.Fatal("a topic without subscribers has a note")
	}
	r.Add("t", s)
	_, stamp, ok := noted(&r, "t")
	if ok {
		t.Fatal("a note before any dispatch or read")
	}

	// A read's Top, noted with the stamp of before the read.
	r.NoteTop("t", pos("e", 4), stamp)
	if p, _, ok := noted(&r, "t"); !ok || p != pos("e", 4) {
		t.Fatalf("after NoteTop: %v, %v; want e:4", p, ok)
	}

	// A read begun before a dispatch notes nothing.
	_, stamp, _ = noted(&r, "t")
	r.Dispatch(&Message{Topic: "t", Pos: pos("e", 5)})
	r.NoteTop("t", pos("e", 4), stamp)
	if p, _, ok := noted(&r, "t"); !ok || p != pos("e", 5) {
		t.Fatalf("a stale read overwrote the dispatched position: %v, %v", p, ok)
	}

	// A broadcast that a read counted, delivered after the note moved
	// past it, leaves the note where it is.
	_, stamp, _ = noted(&r, "t")
	r.NoteTop("t", pos("e", 7), stamp)
	r.Dispatch(&Message{Topic: "t", Pos: pos("e", 6)})
	if p, _, _ := noted(&r, "t"); p != pos("e", 7) {
		t.Fatalf("a late delivery moved the note back: %v", p)
	}
	r.Dispatch(&Message{Topic: "t", Pos: pos("e", 8)})
	r.Dispatch(&Message{Topic: "t", Pos: pos("f", 1)}) // a new epoch replaces it
	if p, _, _ := noted(&r, "t"); p != pos("f", 1) {
		t.Fatalf("note %v, want f:1", p)
	}

	// A message never published takes no offset: the note stands.
	r.Dispatch(&Message{Topic: "t", Local: true})
	if p, _, ok := noted(&r, "t"); !ok || p != pos("f", 1) {
		t.Fatalf("a local message changed the note: %v, %v", p, ok)
	}
	// One published without a position may have taken one.
	r.Dispatch(&Message{Topic: "t"})
	if _, _, ok := noted(&r, "t"); ok {
		t.Fatal("a note after a broadcast without a position")
	}

	// Too old.
	r.Dispatch(&Message{Topic: "t", Pos: pos("f", 3)})
	if _, _, ok := r.NotedTop("t", 0); ok {
		t.Fatal("a note older than maxAge")
	}

	// Forgotten, and reads begun before note nothing.
	_, stamp, _ = noted(&r, "t")
	r.ForgetTops()
	r.NoteTop("t", pos("f", 3), stamp)
	if _, _, ok := noted(&r, "t"); ok {
		t.Fatal("a note after ForgetTops")
	}

	// The last subscriber's leave drops the note with the topic.
	_, stamp, _ = noted(&r, "t")
	r.NoteTop("t", pos("f", 3), stamp)
	r.Remove("t", s)
	r.Add("t", s)
	if _, _, ok := noted(&r, "t"); ok {
		t.Fatal("a note outlived the topic's subscribers")
	}
}

// TestTopNoteSeam: subscribers that join while a topic is broadcast and
// take the note as their position see every broadcast after it and no
// hole: each one's first delivery is at most one past its note (anything
// at or before it being a duplicate).
func TestTopNoteSeam(t *testing.T) {
	var r Registry
	r.Add("t", &nopSub{id: "anchor"}) // the topic lives throughout
	_, stamp, _ := noted(&r, "t")
	r.NoteTop("t", pos("e", 0), stamp)
	const joiners, broadcasts = 200, 2000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(1); i <= broadcasts; i++ {
			r.Dispatch(&Message{Topic: "t", Pos: pos("e", i)})
		}
	}()
	subs := make([]*seamSub, joiners)
	for i := range subs {
		s := &seamSub{id: string(rune('a'+i%26)) + string(rune('0'+i/26))}
		r.Add("t", s)
		top, _, ok := noted(&r, "t")
		if !ok {
			t.Fatalf("joiner %d: no note", i)
		}
		s.set(top)
		subs[i] = s
	}
	wg.Wait()
	for i, s := range subs {
		if s.bad != "" {
			t.Fatalf("joiner %d: %s", i, s.bad)
		}
	}
}

// seamSub checks that what it is delivered follows its starting position
// without a hole.
type seamSub struct {
	id      string
	mu      sync.Mutex
	last    Position
	started bool
	held    []Position // delivered before set
	bad     string
}

func (s *seamSub) SubscriberID() string { return s.id }

func (s *seamSub) Deliver(m *Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started {
		s.held = append(s.held, m.Pos)
		return
	}
	s.advanceLocked(m.Pos)
}

func (s *seamSub) set(top Position) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last, s.started = top, true
	for _, p := range s.held {
		s.advanceLocked(p)
	}
	s.held = nil
}

func (s *seamSub) advanceLocked(p Position) {
	switch {
	case s.bad != "":
	case p.Offset <= s.last.Offset: // a duplicate
	case p.Offset == s.last.Offset+1:
		s.last = p
	default:
		s.bad = "hole: " + p.String() + " after " + s.last.String()
	}
}
