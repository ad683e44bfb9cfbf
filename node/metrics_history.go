package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/channelsd/channelsd/pubsub"
)

// registerHistoryMetrics adds the metrics of history and recovery to reg,
// read at scrape time like the rest: the recoveries from the endpoint's
// counters, the histories held from the PubSub when it can tell
// (pubsub.HistoryCounter).
func (n *Node) registerHistoryMetrics(reg *prometheus.Registry, gauge, counter func(name, help string, labels prometheus.Labels, f func() float64)) {
	if hc, ok := n.cfg.PubSub.(pubsub.HistoryCounter); ok {
		gauge("channelsd_history_topics", "Topics whose history this node holds or knows of (pubsub/local: in its memory; pubsub/redis: the histories it has written or read lately).", nil,
			func() float64 { return float64(hc.HistoryStats().Topics) })
		gauge("channelsd_history_retained_messages", "Broadcasts retained by the histories counted in channelsd_history_topics.", nil,
			func() float64 { return float64(hc.HistoryStats().Retained) })
	}

	es := n.endpoint.Stats()
	const recoveriesHelp = "Joins that asked to recover from a position (since), by result: complete (everything after it was replayed), or incomplete with the reason the join reply gave (epoch changed, position too old, position ahead, invalid position, no history, history unavailable)."
	counter("channelsd_history_recoveries_total", recoveriesHelp, prometheus.Labels{"result": "complete", "reason": ""},
		func() float64 { return float64(es.RecoveriesComplete.Load()) })
	// Every reason is in the map from the start, so the series exist (at
	// 0) before the first incomplete recovery. The complete series has an
	// empty reason, which Prometheus reads as none: one family, one set
	// of label names.
	for reason := range es.RecoveriesIncomplete() {
		counter("channelsd_history_recoveries_total", recoveriesHelp, prometheus.Labels{"result": "incomplete", "reason": reason},
			func() float64 { return float64(es.RecoveriesIncomplete()[reason]) })
	}
	counter("channelsd_history_replayed_messages_total", "Broadcasts replayed from history to joining clients (since or history).", nil,
		func() float64 { return float64(es.Replayed.Load()) })
	counter("channelsd_history_gaps_total", "Channels ended (phx_error, reason history_gap) because their live broadcasts skipped a position; the client rejoins and recovers.", nil,
		func() float64 { return float64(es.HistoryGaps.Load()) })
	counter("channelsd_history_replays_cut_total", "Replays ended before they were whole (the client took too long, or too much was held while it ran); the channel fails with phx_error history_gap and the client rejoins from the last position it got.", nil,
		func() float64 { return float64(es.ReplaysCut.Load()) })
}
