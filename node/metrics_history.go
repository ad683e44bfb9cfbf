package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/channelsd/channelsd/pubsub"
)

// registerHistoryMetrics adds the metrics of history and recovery to reg,
// read at scrape time like the rest: the recoveries from the endpoint's
// counters, the histories held from the PubSub when it can tell
// (pubsub.HistoryCounter).
func (n *Node) registerHistoryMetrics(reg *prometheus.Registry, gauge func(name, help string, labels prometheus.Labels, f func() float64)) {
	if hc, ok := n.cfg.PubSub.(pubsub.HistoryCounter); ok {
		gauge("channelsd_history_topics", "Topics whose history this node holds or knows of (pubsub/local: in its memory; pubsub/redis: the histories it has written or read lately).", nil,
			func() float64 { return float64(hc.HistoryStats().Topics) })
		gauge("channelsd_history_retained_messages", "Broadcasts retained by the histories counted in channelsd_history_topics.", nil,
			func() float64 { return float64(hc.HistoryStats().Retained) })
	}
	n.registerRecoveryMetrics(reg)
}
