package node

import (
	"cmp"
	"context"
	"encoding/json"
	"math"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/redis"
)

// The cluster view. Every ReportInterval each node broadcasts a report of
// its own figures on the reserved topic "phx:nodes" (through the node's
// PubSub, so with Redis every node hears every other; alone, a node hears
// itself), and keeps the latest report of every node it hears. A node
// silent for three intervals drops out of the view. Two things read it:
// the rebalancer (a node far above the cluster's mean asks some of its
// sockets to reconnect elsewhere) and the operators' dashboard.
//
// Reports are broadcasts like any other: at most once, so a lost report
// only ages a node's entry by one interval.
//
// A node that hears a node it had not heard before (a new id, or the same
// id with a new Started: a restart) reports at once besides, at most once
// per promptGap: a starting node then hears every live node of this
// release within a round trip of its first report instead of within an
// interval, which is what its Gate waits for (gate.go: seedGate).
//
// Reports also carry the announcement of the cross-node compatibility
// rule (pubsub/redis/doc.go): "reads", the level of each cross-node form
// this build reads. Every report heard feeds the node's Gate, which the
// writers ask before they use a form newer than the floor's. The report
// itself is the one form that cannot be gated (it carries the
// announcement): its fields are only ever added, never retyped or
// removed, and it travels in the floor's envelope. Releases that predate
// the announcement (b847059) send no "reads" and ignore it, as they
// ignore every JSON field they do not know.

const clusterTopic = "phx:nodes"

// NodeReport is one node's figures, as broadcast and as shown.
type NodeReport struct {
	Node        string `json:"node"`
	Sockets     int64  `json:"sockets"`
	WebSockets  int64  `json:"websockets"`
	LongPoll    int64  `json:"longpoll"`
	Channels    int64  `json:"channels"`
	MessagesIn  uint64 `json:"messages_in"`  // totals since the node started
	MessagesOut uint64 `json:"messages_out"` // 0 when the node does not count them
	Draining    bool   `json:"draining"`
	Started     int64  `json:"started"` // Unix ms: tells a restarted node from its predecessor
	Sent        int64  `json:"sent"`    // Unix ms, the sender's clock
	// Reads is what the node's build reads, per cross-node form
	// (redis.BuildReads); nil or a missing form: the floor's level.
	Reads map[string]int `json:"reads,omitempty"`
	// Release names the node's build, for operators; nothing decides on it.
	Release string `json:"release,omitempty"`

	// Filled by the receiver from its previous report of the same node.
	InRate  float64 `json:"in_rate"`  // messages in per second
	OutRate float64 `json:"out_rate"` // messages out per second
	Age     float64 `json:"age"`      // seconds since this report arrived
	seen    time.Time
}

// clusterView holds the latest report of each node.
type clusterView struct {
	self     string
	interval time.Duration

	// gate learns from every report recorded what its node reads.
	gate *redis.Gate
	// prompt asks clusterLoop for a report now: a new node was heard.
	prompt chan struct{}

	mu      sync.Mutex
	reports map[string]*NodeReport // guarded by mu
}

// newClusterView returns the view of node self. Its Gate forgets a node
// silent for three intervals, as the view does.
func newClusterView(self string, interval time.Duration) *clusterView {
	return &clusterView{
		self: self, interval: interval, reports: make(map[string]*NodeReport),
		gate:   redis.NewGate(self, 3*interval, time.Now()),
		prompt: make(chan struct{}, 1),
	}
}

// SubscriberID and Deliver make the view a pubsub.Subscriber of
// clusterTopic. Deliver decodes on the dispatch path: a report is a few
// hundred bytes every few seconds per node.
func (v *clusterView) SubscriberID() string { return "phx:nodes#view" }

func (v *clusterView) Deliver(m *pubsub.Message) {
	var r NodeReport
	if m.Binary || json.Unmarshal(m.Payload, &r) != nil || r.Node == "" {
		return
	}
	now := time.Now()
	kept, fresh := v.record(&r, now)
	if kept {
		v.gate.Announce(r.Node, r.Reads, now)
	}
	if fresh && r.Node != v.self {
		select {
		case v.prompt <- struct{}{}:
		default: // one is pending already
		}
	}
}

// record keeps r as its node's latest report, and reports whether it
// did (not for a reordered or repeated report) and whether r's node is
// one not heard before (unknown, or known with another Started).
func (v *clusterView) record(r *NodeReport, now time.Time) (kept, fresh bool) {
	r.seen = now
	v.mu.Lock()
	defer v.mu.Unlock()
	prev := v.reports[r.Node]
	if prev != nil && prev.Started == r.Started {
		if dt := float64(r.Sent-prev.Sent) / 1000; dt > 0 {
			r.InRate = rate(prev.MessagesIn, r.MessagesIn, dt)
			r.OutRate = rate(prev.MessagesOut, r.MessagesOut, dt)
		} else {
			return false, false // a reordered or repeated report
		}
	}
	v.reports[r.Node] = r
	return true, prev == nil || prev.Started != r.Started
}

func rate(before, after uint64, dt float64) float64 {
	if after < before {
		return 0
	}
	return math.Round(float64(after-before)/dt*10) / 10
}

// live returns copies of the reports heard within three intervals, sorted
// by node, and forgets older ones.
func (v *clusterView) live(now time.Time) []NodeReport {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]NodeReport, 0, len(v.reports))
	for id, r := range v.reports {
		age := now.Sub(r.seen)
		if age > 3*v.interval {
			delete(v.reports, id)
			continue
		}
		c := *r
		c.Age = math.Round(age.Seconds()*10) / 10
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b NodeReport) int { return cmp.Compare(a.Node, b.Node) })
	return out
}

// report is this node's own report now.
func (n *Node) report() NodeReport {
	es := n.endpoint.Stats()
	r := NodeReport{
		Node:       n.cfg.NodeID,
		Sockets:    es.Sockets.Load(),
		WebSockets: n.ws.Stats().Open.Load(),
		LongPoll:   n.lp.Stats().Open.Load(),
		Channels:   es.Channels.Load(),
		MessagesIn: es.MessagesIn.Load(),
		Draining:   n.draining.Load(),
		Started:    n.started.UnixMilli(),
		Sent:       time.Now().UnixMilli(),
		Reads:      redis.BuildReads(),
		Release:    release,
	}
	if n.messagesOut != nil {
		r.MessagesOut = n.messagesOut()
	}
	return r
}

// release names this build in reports: the module version, or the VCS
// revision it was built from ("" when the build recorded neither).
var release = func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && dirty {
		rev += "+dirty"
	}
	return rev
}()

// Gate is the node's view of which versions of the cross-node message
// forms every live node can read (see redis.Gate), fed by the "reads"
// each node announces in its cluster reports: a writer asks it before it
// sends a form that nodes of an older release might not read. A Redis
// PubSub is given it when the node starts reporting.
func (n *Node) Gate() *redis.Gate { return n.cluster.gate }

// clusterLoop broadcasts this node's report every interval and runs the
// rebalancer on the view, until ctx ends.
func (n *Node) clusterLoop(ctx context.Context) {
	n.seedGate(ctx)
	// Until here a Redis PubSub writes every form at the floor, which
	// every release reads.
	if g, ok := n.cfg.PubSub.(gateTaker); ok {
		g.SetGate(n.cluster.gate)
		n.gated.Store(true)
	}
	tick := time.NewTicker(n.cfg.ReportInterval)
	defer tick.Stop()
	reb := rebalancer{cfg: n.cfg.Rebalance, mark: n.endpoint.Runtime().Generation()}
	var last time.Time       // the latest report sent
	var due <-chan time.Time // a prompt report held back by promptGap
	publish := func() {
		n.publishReport(ctx)
		last, due = time.Now(), nil // a report held back is sent now
	}
	publish()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.cluster.prompt:
			if wait := promptGap - time.Since(last); wait > 0 {
				if due == nil {
					due = time.After(wait)
				}
			} else {
				publish()
			}
			continue
		case <-due:
			publish()
			continue
		case <-tick.C:
		}
		if n.cfg.Rebalance.Threshold > 0 && !n.draining.Load() {
			reb.round(n, n.cluster.live(time.Now()))
		}
		publish()
	}
}

// promptGap is the least time between a report and a prompt one (sent on
// hearing a new node): the nodes of a cluster starting together hear many
// new nodes at once, and answer them all with one report, or two.
const promptGap = 200 * time.Millisecond

func (n *Node) publishReport(ctx context.Context) {
	data, err := json.Marshal(n.report())
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, n.cfg.ReportInterval)
	defer cancel()
	if err := n.cfg.PubSub.Publish(pctx, &pubsub.Message{Topic: clusterTopic, Event: "report", Payload: data}); err != nil {
		n.log.Debug("node: cluster report not sent to every node", "err", err)
	}
}

// RebalanceConfig moves sockets away from a node that holds clearly more
// than its share, typically after a scale-up: new replicas start empty
// while the old ones keep every connection they had.
type RebalanceConfig struct {
	// Threshold: act while this node holds more than (1+Threshold) times
	// the mean of the live, non-draining nodes. 0 turns rebalancing off
	// (the default).
	Threshold float64
	// Share bounds the sockets asked to move per report interval, as a
	// fraction of this node's sockets (at least one). Default 0.05: a
	// node of 20,000 sockets moves at most 1,000 every interval, a
	// reconnect rate any node absorbs.
	Share float64
}

// rebalancer is the state of the rebalancing rounds, owned by
// clusterLoop.
type rebalancer struct {
	cfg   RebalanceConfig
	mark  uint64 // the endpoint's generation at the previous round
	above bool   // the previous round found this node above the threshold
	moved uint64 // sockets asked to move, in total
}

// round asks some of this node's sockets to reconnect when the node is
// above the threshold. The comparison uses the reports only, this node's
// own included, so that every figure is equally old; and it acts only
// when two rounds in a row found the node above, because while clients
// pour in (a deploy, a reconnect storm) reports taken a fraction of an
// interval apart disagree for a moment. Only sockets that were already
// open at the previous round are asked, oldest first: a client that moved
// and landed here again is not asked twice in a row. The client
// reconnects through the load balancer, which picks a node (round robin,
// least connections, ...); the rounds repeat until every node is within
// the threshold.
func (rb *rebalancer) round(n *Node, view []NodeReport) {
	mark := n.endpoint.Runtime().Generation()
	defer func() { rb.mark = mark }()
	var total, own int64
	live, self := 0, false
	for _, r := range view {
		if r.Draining {
			continue
		}
		live++
		total += r.Sockets
		if r.Node == n.cfg.NodeID {
			own, self = r.Sockets, true
		}
	}
	mean := float64(total) / float64(max(live, 1))
	wasAbove := rb.above
	rb.above = self && live >= 2 && float64(own) > mean*(1+rb.cfg.Threshold)
	if !rb.above || !wasAbove {
		return
	}
	excess := int(math.Ceil(float64(own) - mean))
	limit := max(1, int(float64(own)*rb.cfg.Share))
	k := n.endpoint.Runtime().CloseOldest(min(excess, limit), rb.mark, channels.CloseServiceRestart, "rebalancing")
	rb.moved += uint64(k)
	n.rebalanced.Add(uint64(k))
	n.log.Info("node: asked sockets to reconnect elsewhere", "moved", k, "sockets", own, "mean", math.Round(mean), "nodes", live)
}
