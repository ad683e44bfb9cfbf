package redis

import (
	"testing"
	"time"
)

func TestGateWaitsOneTTLBeforeAnyNewerForm(t *testing.T) {
	t0 := time.Unix(1000, 0)
	g := NewGate("me", 15*time.Second, t0)
	g.Announce("b", BuildReads(), t0)
	if g.MayWrite(FormEnvelope, 3, t0.Add(5*time.Second)) {
		t.Fatal("newer form allowed before the Gate could hear every live node")
	}
	g.Announce("b", BuildReads(), t0.Add(10*time.Second))
	if !g.MayWrite(FormEnvelope, 3, t0.Add(16*time.Second)) {
		t.Fatal("newer form refused though every live node announced it")
	}
}

func TestGateFloorAlwaysAndBeyondTheBuildNever(t *testing.T) {
	var nilGate *Gate
	now := time.Now()
	for form, v := range floorReads {
		if !nilGate.MayWrite(form, v, now) || !nilGate.MayWrite(form, v-1, now) {
			t.Errorf("%s at the floor %d refused", form, v)
		}
		if nilGate.MayWrite(form, v+1, now) {
			t.Errorf("%s above the floor allowed without a Gate", form)
		}
		if got := nilGate.NodeReads("x", form, now); got != v {
			t.Errorf("nil Gate NodeReads(%s) = %d, want the floor %d", form, got, v)
		}
	}
	g := NewGate("me", time.Second, now.Add(-time.Hour))
	if g.MayWrite(FormEnvelope, buildReads[FormEnvelope]+1, now) {
		t.Fatal("a level this build does not read allowed")
	}
}

// The scenario of a rolling update, as the Gate sees it.
func TestGateFollowsLiveNodesAnnouncements(t *testing.T) {
	ttl := 15 * time.Second
	t0 := time.Unix(1000, 0)
	g := NewGate("new-1", ttl, t0.Add(-ttl))
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

	// Alone: every form this build reads.
	if !g.MayWrite(FormEnvelope, 3, at(0)) {
		t.Fatal("alone, the newer form refused")
	}
	// An old node's report: no "reads", so the floor.
	g.Announce("old-1", nil, at(1))
	g.Announce("new-2", BuildReads(), at(1))
	if g.MayWrite(FormEnvelope, 3, at(2)) {
		t.Fatal("newer form allowed next to a node that announced nothing")
	}
	if g.NodeReads("old-1", FormCall, at(2)) != 1 || g.NodeReads("new-2", FormCall, at(2)) != 2 {
		t.Fatal("per-node levels wrong")
	}
	// A node announcing only some forms reads the floor of the others.
	g.Announce("old-1", map[string]int{FormCall: 2}, at(3))
	if g.MayWrite(FormEnvelope, 3, at(4)) || !g.MayWrite(FormCall, 2, at(4)) {
		t.Fatal("a missing form is not taken as the floor")
	}
	// A level below the floor announced is still the floor.
	g.Announce("old-1", map[string]int{FormEnvelope: 0}, at(5))
	if g.NodeReads("old-1", FormEnvelope, at(5)) != 2 {
		t.Fatal("an announcement below the floor lowered it")
	}
	// The old node goes away: after the TTL it no longer holds writers back.
	g.Announce("new-2", BuildReads(), at(15))
	if g.MayWrite(FormEnvelope, 3, at(19)) {
		t.Fatal("old node forgotten before its TTL")
	}
	if !g.MayWrite(FormEnvelope, 3, at(21)) {
		t.Fatal("newer form still refused once the old node's TTL passed")
	}
	if g.NodeReads("old-1", FormEnvelope, at(21)) != 2 {
		t.Fatal("an expired node is not read at the floor")
	}
	// A sign of life from an unknown node (a heartbeat, a call) holds
	// writers back at once, before its first report.
	g.Alive("old-2", at(22))
	if g.MayWrite(FormEnvelope, 3, at(22)) {
		t.Fatal("newer form allowed next to a node known only alive")
	}
	// Its report upgrades it; a later sign of life keeps the announcement.
	g.Announce("old-2", BuildReads(), at(23))
	g.Alive("old-2", at(24))
	if !g.MayWrite(FormEnvelope, 3, at(25)) {
		t.Fatal("Alive forgot an announcement")
	}
	// A rollback: the same node id reports without "reads".
	g.Announce("old-2", nil, at(26))
	if g.MayWrite(FormEnvelope, 3, at(26)) {
		t.Fatal("newer form still allowed after a node rolled back")
	}
	// A reordered, older report does not undo a newer one.
	g.Announce("old-2", BuildReads(), at(25))
	if g.MayWrite(FormEnvelope, 3, at(27)) {
		t.Fatal("a reordered report overrode a newer one")
	}
	// Forget: a clean shutdown.
	g.Forget("old-2")
	if !g.MayWrite(FormEnvelope, 3, at(27)) {
		t.Fatal("a forgotten node still holds writers back")
	}
	// Its own reports do not count.
	g.Announce("new-1", nil, at(28))
	if !g.MayWrite(FormEnvelope, 3, at(28)) {
		t.Fatal("the Gate's own node counted")
	}
}

// A node restarted in a cluster of this release: the roster names the
// nodes live at its start, and once each has announced, the Gate opens
// long before its TTL.
func TestGateSeededOpensOnceTheRosterAnnounced(t *testing.T) {
	ttl := 6 * time.Second
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	g := NewGate("me", ttl, t0)
	g.SeedRoster([]string{"me", "a", "b"}, ms(5))
	if g.MayWrite(FormEnvelope, 3, ms(10)) {
		t.Fatal("open before any roster node announced")
	}
	g.Announce("a", BuildReads(), ms(20))
	if g.MayWrite(FormEnvelope, 3, ms(30)) {
		t.Fatal("open with roster node b not yet heard")
	}
	g.Alive("b", ms(40)) // a call from b: alive, but nothing announced
	if g.MayWrite(FormEnvelope, 3, ms(50)) {
		t.Fatal("open with roster node b known only alive (the floor)")
	}
	g.Announce("b", BuildReads(), ms(60))
	if !g.MayWrite(FormEnvelope, 3, ms(70)) {
		t.Fatal("closed though every roster node announced the level")
	}
	// The level asked must be announced, not only some level.
	g.Announce("b", map[string]int{FormEnvelope: 3}, ms(80))
	if g.MayWrite(FormCall, 2, ms(90)) || !g.MayWrite(FormEnvelope, 3, ms(90)) {
		t.Fatal("a roster node's missing form is not taken as the floor")
	}
}

// The first node of a cluster: nobody else in the roster, nobody heard
// from, so nothing to wait for.
func TestGateSeededAloneOpensAtOnce(t *testing.T) {
	t0 := time.Unix(1000, 0)
	g := NewGate("me", 6*time.Second, t0)
	if g.MayWrite(FormEnvelope, 3, t0) {
		t.Fatal("unseeded Gate open before its TTL")
	}
	g.SeedRoster([]string{"me"}, t0)
	if !g.MayWrite(FormEnvelope, 3, t0.Add(time.Millisecond)) {
		t.Fatal("alone in the roster, still closed")
	}
	// A node that starts later holds it back from its first sign of life.
	g.Alive("late", t0.Add(2*time.Millisecond))
	if g.MayWrite(FormEnvelope, 3, t0.Add(3*time.Millisecond)) {
		t.Fatal("open next to a node heard from without an announcement")
	}
}

// A roster node that never announces (an older release whose report has
// not come yet, or a node that died within the presence window) keeps the
// Gate closed until TTL; then the usual rule: never heard from, so gone.
func TestGateSeededRosterNodeSilentClosesUntilTTL(t *testing.T) {
	ttl := 6 * time.Second
	t0 := time.Unix(1000, 0)
	g := NewGate("me", ttl, t0)
	g.SeedRoster([]string{"a", "silent"}, t0)
	g.Announce("a", BuildReads(), t0.Add(time.Second))
	for _, d := range []time.Duration{time.Second, 3 * time.Second, ttl - time.Millisecond} {
		if g.MayWrite(FormEnvelope, 3, t0.Add(d)) {
			t.Fatalf("open at %v with a roster node silent", d)
		}
	}
	g.Announce("a", BuildReads(), t0.Add(5*time.Second))
	if !g.MayWrite(FormEnvelope, 3, t0.Add(ttl)) {
		t.Fatal("still closed at TTL though the silent node was never heard from")
	}
	// The same silent node, but one that reports at the floor after all
	// (a release before the announcement): closed while it is heard.
	g.Announce("silent", nil, t0.Add(ttl+time.Second))
	if g.MayWrite(FormEnvelope, 3, t0.Add(ttl+time.Second)) {
		t.Fatal("open next to a node of the floor past TTL")
	}
}

// A node outside the roster (it started after the roster was read)
// announcing the floor keeps the Gate closed though the roster announced.
func TestGateSeededNodeOutsideTheRosterAtTheFloorCloses(t *testing.T) {
	t0 := time.Unix(1000, 0)
	g := NewGate("me", 6*time.Second, t0)
	g.SeedRoster([]string{"a"}, t0)
	g.Announce("a", BuildReads(), t0.Add(10*time.Millisecond))
	g.Announce("old", nil, t0.Add(20*time.Millisecond))
	if g.MayWrite(FormEnvelope, 3, t0.Add(30*time.Millisecond)) {
		t.Fatal("open next to a node outside the roster that reads the floor")
	}
	g.Announce("old", BuildReads(), t0.Add(40*time.Millisecond))
	if !g.MayWrite(FormEnvelope, 3, t0.Add(50*time.Millisecond)) {
		t.Fatal("closed once every node heard from announced")
	}
}

// A rollback: a roster node that announced, then is replaced by an older
// release under the same id, closes the Gate at its first report.
func TestGateSeededRosterNodeRolledBackClosesAtOnce(t *testing.T) {
	t0 := time.Unix(1000, 0)
	g := NewGate("me", 6*time.Second, t0)
	g.SeedRoster([]string{"a", "b"}, t0)
	g.Announce("a", BuildReads(), t0.Add(10*time.Millisecond))
	g.Announce("b", BuildReads(), t0.Add(10*time.Millisecond))
	if !g.MayWrite(FormEnvelope, 3, t0.Add(20*time.Millisecond)) {
		t.Fatal("closed though the roster announced")
	}
	g.Announce("b", nil, t0.Add(30*time.Millisecond))
	if g.MayWrite(FormEnvelope, 3, t0.Add(30*time.Millisecond)) {
		t.Fatal("open after a roster node re-announced the floor")
	}
	// Past TTL too, while it is heard.
	g.Announce("b", nil, t0.Add(6*time.Second))
	if g.MayWrite(FormEnvelope, 3, t0.Add(7*time.Second)) {
		t.Fatal("open past TTL next to the rolled-back node")
	}
}

// A roster node that shuts down cleanly (Forget) is no longer waited for.
func TestGateSeededForgetsARosterNode(t *testing.T) {
	t0 := time.Unix(1000, 0)
	g := NewGate("me", 6*time.Second, t0)
	g.SeedRoster([]string{"a", "gone"}, t0)
	g.Announce("a", BuildReads(), t0.Add(10*time.Millisecond))
	if g.MayWrite(FormEnvelope, 3, t0.Add(20*time.Millisecond)) {
		t.Fatal("open with roster node gone not heard")
	}
	g.Forget("gone")
	if !g.MayWrite(FormEnvelope, 3, t0.Add(30*time.Millisecond)) {
		t.Fatal("a forgotten roster node still waited for")
	}
}

// A Gate is settled once its roster's nodes have reported (a sign of life
// is not a report), or once its TTL has passed; without a roster, only
// then.
func TestGateSettlesOnceTheRosterReported(t *testing.T) {
	t0 := time.Now()
	var nilGate *Gate
	if !nilGate.Settled(t0) {
		t.Fatal("a nil Gate is not settled")
	}
	g := NewGate("me", 15*time.Second, t0)
	if g.Settled(t0.Add(time.Second)) {
		t.Fatal("settled without a roster before its TTL")
	}
	if !g.Settled(t0.Add(16 * time.Second)) {
		t.Fatal("not settled past its TTL")
	}
	g.SeedRoster([]string{"me", "a", "b"}, t0)
	now := t0.Add(time.Second)
	g.Announce("a", BuildReads(), now)
	g.Alive("b", now)
	if g.Settled(now) {
		t.Fatal("settled while roster node b gave only a sign of life")
	}
	g.Announce("b", nil, now) // a node of the floor: heard all the same
	if !g.Settled(now) {
		t.Fatal("not settled once every roster node reported")
	}
	empty := NewGate("me", 15*time.Second, t0)
	empty.SeedRoster([]string{"me"}, t0)
	if !empty.Settled(t0) {
		t.Fatal("a node alone in its roster is not settled at once")
	}
}

// TestGateAnswerKeepsOnlyAYes: the message paths' kept answer (a yes)
// stands, without asking the Gate, while the Gate is unchanged, and
// gives way at once to a node that reads less; a no is asked again every
// time, so time alone turns it into a yes. (The clock passed in is read
// only when the Gate is asked.)
func TestGateAnswerKeepsOnlyAYes(t *testing.T) {
	now := time.Now()
	g := NewGate("a", time.Second, now.Add(-time.Hour))
	a := gateAnswer{form: FormShard, level: 2}
	asked := 0
	at := func(when time.Time) func() time.Time {
		return func() time.Time { asked++; return when }
	}
	check := func(g *Gate, clock func() time.Time, want bool, wantAsked int, what string) {
		t.Helper()
		if got := a.mayWrite(g, clock); got != want || asked != wantAsked {
			t.Fatalf("%s: %v after %d questions to the Gate, want %v after %d", what, got, asked, want, wantAsked)
		}
	}
	check(g, at(now), true, 1, "first question")
	check(g, at(now), true, 1, "unchanged Gate")
	g.Alive("b", now) // known only alive: the floor
	check(g, at(now), false, 2, "a node heard from without its announcement")
	g.Announce("b", BuildReads(), now)
	check(g, at(now), true, 3, "its announcement")
	check(g, at(now), true, 3, "unchanged Gate")
	reads := BuildReads()
	reads[FormShard] = 1
	g.Announce("old", reads, now)
	check(g, at(now), false, 4, "a node that reads less")
	check(g, at(now), false, 5, "a no is asked again")
	later := now.Add(2 * time.Second)
	g.Announce("b", BuildReads(), later)
	check(g, at(later), true, 6, "the node that reads less went silent")
	fresh := NewGate("a", time.Second, now) // its first TTL, no roster: no
	check(fresh, at(now), false, 7, "another Gate")
	check(nil, at(now), false, 8, "no Gate")
}
