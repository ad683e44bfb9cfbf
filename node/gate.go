package node

import (
	"context"
	"time"

	"github.com/channelsd/channelsd/pubsub/redis"
)

// The Gate's roster. A node's Gate (pubsub/redis gate.go) does not let
// writers use a form newer than the floor's until it has heard from every
// live node: without more knowledge, for its first three report
// intervals, since a node of an older release may be live and not yet
// have reported. Meanwhile a history topic's broadcasts go out without
// their position, and clients that recover later get them again with one.
// The presence heartbeats tell which nodes are live when this node
// starts; given them, the Gate waits only for those nodes' reports, which
// the prompt reports (cluster.go) bring within a round trip.

// gateTaker is implemented by a PubSub whose cross-node forms the Gate
// governs (pubsub/redis).
type gateTaker interface{ SetGate(*redis.Gate) }

// liveNodeLister is implemented by a presence tracker that knows which
// nodes are live cluster-wide (presence/redis: the nodes whose heartbeat
// is fresh, under the same ids as the PubSub's).
type liveNodeLister interface {
	LiveNodes(ctx context.Context) ([]string, error)
}

// seedGate gives the Gate the nodes live now, when the presence tracker
// can list them. Without them (the in-memory tracker, or Redis not
// answering) the Gate waits out its TTL as before: an incomplete roster
// could open it next to a silent node of an older release.
func (n *Node) seedGate(ctx context.Context) {
	l, ok := n.cfg.Presence.(liveNodeLister)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ReportInterval)
	defer cancel()
	nodes, err := l.LiveNodes(ctx)
	if err != nil {
		n.log.Warn("node: live nodes unknown; newer cross-node forms wait three report intervals", "err", err)
		return
	}
	n.cluster.gate.SeedRoster(nodes, time.Now())
}
