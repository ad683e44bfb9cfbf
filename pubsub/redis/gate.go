package redis

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// The cross-node forms, by the names nodes announce them under in their
// cluster reports ("reads", in the reports package node publishes on
// phx:nodes). A form's
// level says which of its encodings a node reads: every level from the
// floor up to the announced one. A level is not a byte on the wire; it
// names what the reader understands (the envelope's version byte is
// still 2 at level 3).
const (
	// FormEnvelope is the broadcast envelope.
	// 2: versions 1 and 2, flag bit 0 (b847059).
	// 3: also flag bit 1, the extension area (unknown records skipped;
	// record tag 1, a history position, read since history).
	FormEnvelope = "envelope"
	// FormCall is the node call and reply frames.
	// 1: kinds 'c' and 'r', reply statuses 0 and 1 (b847059).
	// 2: also status 2 (answer too large), any other status read as an
	// error answer at once, kinds 'C' and 'R' (an extension area after
	// the fixed fields, skipped).
	FormCall = "call"
	// FormRelay is the long-poll relay request and answer (package
	// transport).
	// 1: b847059. Pseudo-headers (names starting with ':') are the
	// extension point: b847059 passes them on unread; this release drops
	// them before serving. No gated change yet.
	FormRelay = "relay"
	// FormToken is the long-poll session token (package transport).
	// 1: version 1 (b847059).
	// 2: also version 2: the node id is length-prefixed, and what
	// follows it is skipped (by the routing node; the issuing node reads
	// its own tokens). Any other version is refused.
	FormToken = "token"
	// FormPresence is the presence hash value and diff (presence/redis).
	// 1: b847059. JSON: unknown fields are ignored by every release.
	FormPresence = "presence"
	// FormShard is how a topic's broadcasts travel on a Redis Cluster.
	// 1: PUBLISH/SUBSCRIBE on "<prefix>:t:<topic>" (b847059, and the
	// first releases that ran on a cluster).
	// 2: also SPUBLISH/SSUBSCRIBE on the shard channel
	// "<prefix>:t:{<topic>}". A single Redis or Sentinel stays at 1.
	FormShard = "shard"
)

// floorReads is what the release of b847059, the oldest release a
// rolling update starts from, reads: what a node that announces nothing
// (it predates the announcement) is taken to read.
var floorReads = map[string]int{FormEnvelope: 2, FormCall: 1, FormRelay: 1, FormToken: 1, FormPresence: 1, FormShard: 1}

// buildReads is what this build reads. A reader that learns a new level
// raises its form here, in the same change; writers never look at it.
var buildReads = map[string]int{FormEnvelope: 3, FormCall: 2, FormRelay: 1, FormToken: 2, FormPresence: 1, FormShard: 2}

// FloorReads returns the levels every live node is assumed to read.
func FloorReads() map[string]int { return maps.Clone(floorReads) }

// BuildReads returns the levels this build reads, for its cluster report.
func BuildReads() map[string]int { return maps.Clone(buildReads) }

// Gate answers one question for the writers of cross-node forms: may this
// node write form F at level v, that is, does every live node read it?
// It learns the live nodes and what they read from the cluster reports
// (Announce) and from any other sign of life (Alive: a heartbeat, a call
// received). A node heard from without an announcement reads the floor;
// a node not heard from for TTL is forgotten.
//
// Until TTL has passed since the Gate started it may not yet have heard
// from every live node, and a node of an older release must not have its
// silence taken for absence. Without a roster it then answers no to
// anything above the floor. With one (SeedRoster: the nodes live when
// this node started, from the presence heartbeats every release since
// b847059 writes), it knows whom it is waiting for, and answers yes as
// soon as every roster node and every other node heard from has
// announced the level; a roster node not heard from keeps it at no until
// TTL. Past TTL the roster no longer counts: a node silent for TTL is
// gone whether listed or not. Without the roster a restarted node wrote
// the floor's form for its first TTL (3 report intervals), so its history
// broadcasts reached clients without their position and were replayed
// again, with one, on the client's next recovery: a duplicate on every
// rolling restart.
//
// A Gate never raises what goes on the wire by itself: a writer asks it
// before each use of a newer form and writes the floor's form when the
// answer is no, so the moment a node that cannot read the newer form
// appears (its first report or sign of life), writers fall back.
//
// Where it is asked today: a node whose answer to a node call is too
// large to send asks NodeReads whether the caller understands the status
// that says so; a broadcast of a topic with history carries its position in
// the envelope's extension area only while MayWrite(FormEnvelope, 3, now),
// and the floor's form otherwise; on a Redis Cluster a topic's broadcast
// goes out with SPUBLISH on its shard channel only while
// MayWrite(FormShard, 2, now), and with PUBLISH on the classic channel
// otherwise: a node of this release listens on both, so each broadcast
// is sent, and received, once. A form that needs more than this release
// reads raises its level in BuildReads in the release that learns to read
// it, and is written from the release after.
type Gate struct {
	self    string
	ttl     time.Duration
	started time.Time
	// gen counts the changes that can turn an answer of MayWrite from
	// yes to no (a node heard from, a roster), and Forget; time passing
	// alone only turns answers from no to yes (nodes expire, the roster
	// stops counting). A caller may keep a yes for as long as gen stays
	// (changes).
	gen atomic.Uint64

	mu    sync.Mutex
	nodes map[string]*gateNode // guarded by mu
	// roster is the nodes live at start (SeedRoster), self excluded; nil
	// while not seeded. Only read before TTL. Guarded by mu.
	roster map[string]bool
}

type gateNode struct {
	reads     map[string]int // nil: not announced, or announced nothing (the floor)
	seen      time.Time
	announced bool // a report was heard, not just a sign of life
}

// NewGate returns the Gate of node self, counting from now. ttl is how
// long a node stays live after it was last heard from: three report
// intervals, as for the cluster view.
func NewGate(self string, ttl time.Duration, now time.Time) *Gate {
	return &Gate{self: self, ttl: ttl, started: now, nodes: make(map[string]*gateNode)}
}

// Announce records a node's cluster report: it is live at now and reads
// reads (nil or missing forms: the floor). A later report replaces an
// earlier one, so a node rolled back to an older release is taken at its
// word at once.
func (g *Gate) Announce(node string, reads map[string]int, now time.Time) {
	if g == nil || node == "" || node == g.self {
		return
	}
	var r map[string]int
	if len(reads) > 0 {
		r = maps.Clone(reads)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.nodes[node]; n != nil && now.Before(n.seen) {
		return // a reordered report
	}
	g.nodes[node] = &gateNode{reads: r, seen: now, announced: true}
	g.gen.Add(1)
}

// Alive records a sign of life from node without an announcement: a new
// node counts as the floor until its report arrives; a known one keeps
// what it announced.
func (g *Gate) Alive(node string, now time.Time) {
	if g == nil || node == "" || node == g.self {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if n := g.nodes[node]; n != nil {
		if now.After(n.seen) {
			n.seen = now
		}
		return
	}
	g.nodes[node] = &gateNode{seen: now}
	g.gen.Add(1)
}

// SeedRoster tells the Gate which nodes were live when its node started
// (self may be among them), so that it need not wait out its TTL: see
// Gate. The list must be complete, every node that might be live and
// silent, or the Gate could open next to one that reads only the floor;
// nodes that start later are heard from (their first report, their first
// call) as after TTL. A roster given once TTL has passed changes nothing.
// A later call replaces the roster.
func (g *Gate) SeedRoster(nodes []string, now time.Time) {
	if g == nil || now.Sub(g.started) >= g.ttl {
		return
	}
	r := make(map[string]bool, len(nodes))
	for _, id := range nodes {
		if id != "" && id != g.self {
			r[id] = true
		}
	}
	g.mu.Lock()
	g.roster = r
	g.gen.Add(1)
	g.mu.Unlock()
}

// Settled reports whether the Gate's answers are what the cluster reads
// rather than the caution of a node that has just started: TTL has passed
// since it started, or it was seeded with a roster and every roster node
// has reported since. A node that is not settled yet writes the floor's
// forms, so it reports itself not ready (node's /readyz) until it is:
// the load balancer and the API's callers then reach it once it carries
// history positions, which the prompt reports of the other nodes make a
// matter of a round trip.
func (g *Gate) Settled(now time.Time) bool {
	if g == nil || now.Sub(g.started) >= g.ttl {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.roster == nil {
		return false
	}
	for id := range g.roster {
		if n := g.nodes[id]; n == nil || !n.announced {
			return false
		}
	}
	return true
}

// Forget drops a node known to be gone (a clean shutdown), before its
// TTL runs out; a roster node forgotten is no longer waited for.
func (g *Gate) Forget(node string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	delete(g.nodes, node)
	delete(g.roster, node)
	g.gen.Add(1)
	g.mu.Unlock()
}

// changes returns the Gate's count of changes (gen), 0 for a nil Gate.
func (g *Gate) changes() uint64 {
	if g == nil {
		return 0
	}
	return g.gen.Load()
}

// MayWrite reports whether every live node reads form at level v. At or
// below the floor it is always true; above what this build reads, never;
// before TTL, only when seeded and every roster node has announced v.
func (g *Gate) MayWrite(form string, v int, now time.Time) bool {
	if v <= floorReads[form] {
		return true
	}
	if g == nil || v > buildReads[form] {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.started) < g.ttl {
		if g.roster == nil {
			return false
		}
		for id := range g.roster {
			if n := g.nodes[id]; n == nil || readsOf(n.reads, form) < v {
				return false
			}
		}
	}
	for id, n := range g.nodes {
		if now.Sub(n.seen) > g.ttl {
			delete(g.nodes, id)
			continue
		}
		if readsOf(n.reads, form) < v {
			return false
		}
	}
	return true
}

// NodeReads returns the level of form that one node reads, for an answer
// addressed to that node alone (a call's reply): what it announced, or
// the floor when it announced nothing or is not known.
func (g *Gate) NodeReads(node, form string, now time.Time) int {
	if g == nil {
		return floorReads[form]
	}
	if node == g.self {
		return buildReads[form]
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.nodes[node]
	if n == nil || now.Sub(n.seen) > g.ttl {
		return floorReads[form]
	}
	return readsOf(n.reads, form)
}

func readsOf(reads map[string]int, form string) int {
	if v, ok := reads[form]; ok && v > floorReads[form] {
		return v
	}
	return floorReads[form]
}

// gateAnswer keeps the Gate's yes to one question (may this node write
// form at level), for the paths that ask it for every message (a
// delivered history broadcast, a publish): while the Gate has not
// changed since it said yes, the answer stands (time alone never turns a
// yes into a no, see gen), and asking costs two atomic loads instead of
// the Gate's lock and a walk over its nodes. A no is asked again every
// time: it lasts only while some node reads less (a rolling update), and
// time alone can turn it into a yes.
type gateAnswer struct {
	form  string
	level int
	yes   atomic.Pointer[gateYes]
}

type gateYes struct {
	gate *Gate
	gen  uint64
}

// mayWrite answers g.MayWrite(form, level, now()), calling now only when
// it asks the Gate.
func (a *gateAnswer) mayWrite(g *Gate, now func() time.Time) bool {
	if y := a.yes.Load(); y != nil && y.gate == g && y.gen == g.changes() {
		return true
	}
	gen := g.changes() // before asking: a change while the Gate answers shows next time
	if !g.MayWrite(a.form, a.level, now()) {
		return false
	}
	a.yes.Store(&gateYes{g, gen})
	return true
}
