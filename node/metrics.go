package node

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/redis"
)

// redisStatser is implemented by the Redis PubSub (*redis.PubSub), and by
// anything wrapping it that forwards Stats.
type redisStatser interface {
	Stats() redis.Stats
}

// crossNodeObservable is implemented by the Redis PubSub (*redis.PubSub):
// it reports each received broadcast's publish-to-dispatch latency.
type crossNodeObservable interface {
	ObserveCrossNode(f func(time.Duration))
}

// Histogram buckets, in seconds. Fan-out: from 1µs (a topic with a
// handful of local sockets) to 100ms (tens of thousands, or a node out of
// CPU). Cross-node: from 100µs (same host, idle Redis) to 5s (a publish
// queue backed up to its timeout).
var (
	fanoutBuckets = []float64{
		1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
		1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
	}
	crossNodeBuckets = []float64{
		1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
		0.1, 0.25, 0.5, 1, 2.5, 5,
	}
)

// newMetricsRegistry builds the node's private Prometheus registry. Almost
// every metric reads a counter the node already keeps (atomics in the
// endpoint, the transports, the presence tracker and the Redis PubSub) at
// scrape time: nothing is counted twice and the message paths do no extra
// work. The two latency histograms are the exception: they are fed from
// the dispatch paths through observer hooks this function installs on
// the PubSub (one clock pair and one Observe per dispatch, not per
// socket). A PubSub shared by several in-process nodes reports to the
// last one built.
func (n *Node) newMetricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	gauge := func(name, help string, labels prometheus.Labels, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: name, Help: help, ConstLabels: labels,
		}, f))
	}
	counter := func(name, help string, labels prometheus.Labels, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: name, Help: help, ConstLabels: labels,
		}, f))
	}
	boolean := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}

	gauge("channelsd_draining", "1 once the node has begun draining (POST /api/drain, `channelsd drain`, or shutdown): not ready, refusing new sockets, closing the open ones over the drain window; else 0.", nil,
		func() float64 { return boolean(n.draining.Load()) })
	counter("channelsd_drain_sockets_closed_total", "Sockets (WebSocket connections and long-poll sessions) the drain has closed (code 1012); with channelsd_sockets it shows the drain's progress.", nil,
		func() float64 { return float64(n.drainClosed.Load()) })

	// Endpoint.
	es := n.endpoint.Stats()
	const socketsHelp = "Open sockets (WebSocket connections or long-poll sessions), by transport."
	ws, lp := n.ws.Stats(), n.lp.Stats()
	gauge("channelsd_sockets", socketsHelp, prometheus.Labels{"transport": "websocket"},
		func() float64 { return float64(ws.Open.Load()) })
	gauge("channelsd_sockets", socketsHelp, prometheus.Labels{"transport": "longpoll"},
		func() float64 { return float64(lp.Open.Load()) })
	gauge("channelsd_channels", "Channels currently joined, over all sockets.", nil,
		func() float64 { return float64(es.Channels.Load()) })
	counter("channelsd_joins_total", "Channel joins accepted.", nil,
		func() float64 { return float64(es.Joins.Load()) })
	counter("channelsd_messages_in_total", "Messages received from clients, malformed ones included.", nil,
		func() float64 { return float64(es.MessagesIn.Load()) })
	counter("channelsd_malformed_frames_total", "Client messages that could not be decoded (the socket is closed with 1007).", nil,
		func() float64 { return float64(es.MalformedFrames.Load()) })
	counter("channelsd_channel_crashes_total", "Channel callbacks that panicked (the channel is terminated).", nil,
		func() float64 { return float64(es.Crashes.Load()) })
	counter("channelsd_join_timeouts_total", "Joins answered later (a proxied join's backend call) that got no answer within the join timeout; the client got {\"reason\":\"join timeout\"}.", nil,
		func() float64 { return float64(es.JoinTimeouts.Load()) })
	counter("channelsd_slow_consumer_disconnects_total", "Sockets disconnected because their outbound queue was full.", nil,
		func() float64 { return float64(es.SlowConsumers.Load()) })

	// WebSocket transport.
	counter("channelsd_websocket_upgrades_total", "WebSocket handshakes completed (connections upgraded).", nil,
		func() float64 { return float64(ws.Accepted.Load()) })
	counter("channelsd_websocket_refused_total", "WebSocket handshakes answered without an upgrade (bad origin, vsn, refused connect, draining...).", nil,
		func() float64 { return float64(ws.Refused.Load()) })
	counter("channelsd_websocket_attaches_total", "Times a WebSocket connection waiting on its bare descriptor took a file of the runtime's poller to wait on (the rest of a frame, a write the client's window could not take, the close); each costs a few system calls. Connections let their net.Conn go when they first wait in the poller, and the file when they wait there again.", nil,
		func() float64 { return float64(ws.Attached.Load()) })
	const wsClosesHelp = "WebSocket connections closed by the server, by reason: slow_consumer (1008, outbound queue full), too_big (1009, message above the maximum frame size), invalid_utf8 (1007), protocol_error (1002), idle_timeout (1001, no frame within the idle timeout), message_timeout (1008, a message not whole within the message timeout), message_buffers_full (1013, the node's budget of message buffers was spent), write_error (a write failed or timed out)."
	for reason, c := range map[string]interface{ Load() uint64 }{
		"slow_consumer":        &ws.SlowConsumers,
		"too_big":              &ws.TooBig,
		"invalid_utf8":         &ws.InvalidUTF8,
		"protocol_error":       &ws.ProtocolError,
		"idle_timeout":         &ws.IdleTimeouts,
		"write_error":          &ws.WriteErrors,
		"message_timeout":      &ws.MessageTimeouts,
		"message_buffers_full": &ws.MessageBuffersFull,
	} {
		counter("channelsd_websocket_closes_total", wsClosesHelp, prometheus.Labels{"reason": reason},
			func() float64 { return float64(c.Load()) })
	}

	// Long-poll transport.
	for _, m := range []struct {
		name, help string
		c          interface{ Load() uint64 }
	}{
		{"channelsd_longpoll_sessions_opened_total", "Long-poll sessions created.", &lp.Opened},
		{"channelsd_longpoll_refused_total", "Long-poll opening requests refused (origin, vsn, connect, session limit).", &lp.Refused},
		{"channelsd_longpoll_sessions_expired_total", "Long-poll sessions ended because the client stopped polling (session timeout).", &lp.Expired},
		{"channelsd_longpoll_bad_tokens_total", "Long-poll requests with an invalid, expired or dead-session token.", &lp.BadTokens},
		{"channelsd_longpoll_polls_total", "Long-poll GET polls on a live session.", &lp.Polls},
		{"channelsd_longpoll_posts_total", "Long-poll POSTs on a live session.", &lp.Posts},
		{"channelsd_longpoll_dropped_binary_total", "Server binary frames dropped because long-poll cannot carry them.", &lp.DroppedBinary},
		{"channelsd_longpoll_overflowed_total", "Long-poll sessions ended as slow consumers because their buffer held --longpoll-max-buffered messages (in bytes: channelsd_limit_hits_total{limit=\"longpoll_buffered_bytes\"}).", &lp.Overflowed},
		{"channelsd_longpoll_relay_panics_total", "Panics recovered in the long-poll transport: serving a relayed request (answered 500) or a session's HandleClose; the node carries on.", &lp.Panics},
		{"channelsd_longpoll_answer_failures_total", "Long-poll answers carrying messages that could not be written (client gone, or not reading within the I/O timeout).", &lp.AnswerFailures},
		{"channelsd_longpoll_bad_lines_total", "Long-poll POST lines that were neither JSON nor base64.", &lp.BadLines},
		{"channelsd_longpoll_bodies_too_large_total", "Long-poll POSTs refused for a body above the maximum size.", &lp.BodiesTooLarge},
	} {
		counter(m.name, m.help, nil, func() float64 { return float64(m.c.Load()) })
	}

	// Limits: one counter of refusals per limit, each read from the atomic
	// its refusal path adds to.
	const limitHelp = "Refusals by limit (README \"Limits\"): sockets (upgrade or long-poll open answered 503), pending_upgrades (503), handshake_timeout (connection cut while its request headers were still incomplete), frame_size (WebSocket closed 1009), message_timeout (WebSocket closed 1008: a message not whole in time), message_buffers (WebSocket closed 1013: the node's message buffers full), url_length (WebSocket upgrade answered 414), channels (join refused: too many channels joined), messages_per_second (message dropped: rate limited), rate_abuse (socket closed 1008 for a persistent excess of its rate), payload_size, topic_length, event_length, ref_length (message dropped with an error reply), longpoll_sessions, longpoll_sessions_per_address (opening GET answered 503), longpoll_buffered, longpoll_buffered_bytes (session ended as a slow consumer), longpoll_body (POST answered 413), longpoll_body_buffers (POST answered 503: the node's long-poll body buffers full), longpoll_io_timeout (POST body or answer cut off), longpoll_relay_size (relayed POST answered 413, or session ended: a message too large to relay), presence_key_length, presence_meta_size, presence_topic_entries, presence_join_entries (presence track refused), redis_message_size (a message over --redis-max-message-size refused), http_idle_timeout (keep-alive connection closed, idle between requests), http_request_timeout (request body not received in time: connection closed), http_connections (over --max-connections: an idle keep-alive connection closed to make room, or the new one closed unanswered)."
	for limit, f := range n.limitHits() {
		counter("channelsd_limit_hits_total", limitHelp, prometheus.Labels{"limit": limit},
			func() float64 { return float64(f()) })
	}
	gauge("channelsd_websocket_message_buffer_bytes", "Bytes held in buffers of WebSocket messages in progress (fragmented, or larger than the read buffer), bounded by --max-message-buffers.", nil,
		func() float64 { return float64(ws.MessageBuffers.Load()) })
	gauge("channelsd_socket_slots_used", "Sockets counted against --max-sockets: open WebSocket connections and long-poll sessions, plus handshakes in progress.", nil,
		func() float64 { return float64(n.slots.InUse()) })

	// Both transports: messages (frames) written to clients.
	counter("channelsd_messages_out_total", "Messages written to clients over all transports: WebSocket text and binary frames written, long-poll messages handed out in poll responses.", nil,
		func() float64 { return float64(ws.MessagesOut.Load() + lp.MessagesOut.Load()) })

	// Presence.
	if pc, ok := n.cfg.Presence.(presence.EntryCounter); ok {
		gauge("channelsd_presence_entries", "Presence entries tracked by this node (one per socket, topic and key); other nodes' entries are not counted.", nil,
			func() float64 { return float64(pc.Entries()) })
	}
	if rc, ok := n.cfg.Presence.(interface{ Repairs() uint64 }); ok {
		counter("channelsd_presence_repairs_total", "Fresh presence_state messages this node sent its local subscribers of a topic after a gap in another node's diffs or a Redis outage (anti-entropy; at most one per topic per second).", nil,
			func() float64 { return float64(rc.Repairs()) })
	}

	// The application's own (Config.Collectors).
	reg.MustRegister(n.cfg.Collectors...)

	// History and recovery (metrics_history.go).
	n.registerHistoryMetrics(reg, gauge, counter)

	// Latency histograms, fed by the PubSub's observer hooks.
	if o, ok := n.cfg.PubSub.(pubsub.DispatchObservable); ok {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "channelsd_broadcast_fanout_seconds",
			Help:    "Time to hand one broadcast to every local subscriber of its topic on this node (sockets' outbound queues, not the network); dispatches to topics without local subscribers are not observed.",
			Buckets: fanoutBuckets,
		})
		reg.MustRegister(h)
		o.ObserveDispatch(func(d time.Duration) { h.Observe(d.Seconds()) })
	}
	if o, ok := n.cfg.PubSub.(crossNodeObservable); ok {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "channelsd_cross_node_latency_seconds",
			Help:    "Time from a broadcast's publish on another node to its dispatch on this node, by the two nodes' clocks: clock skew shifts it, and negative values are counted as 0.",
			Buckets: crossNodeBuckets,
		})
		reg.MustRegister(h)
		o.ObserveCrossNode(func(d time.Duration) { h.Observe(d.Seconds()) })
	}

	// Redis PubSub, when the node uses it.
	if rs, ok := n.cfg.PubSub.(redisStatser); ok {
		for _, m := range []struct {
			name, help string
			get        func(redis.Stats) uint64
		}{
			{"channelsd_redis_published_total", "Broadcasts published to Redis and acknowledged.", func(s redis.Stats) uint64 { return s.Published }},
			{"channelsd_redis_publish_errors_total", "Publishes to Redis that failed (Redis error, timeout, canceled, disconnected); a full queue is counted in channelsd_redis_dropped_total.", func(s redis.Stats) uint64 { return s.PublishErrors }},
			{"channelsd_redis_dropped_total", "Publishes refused because the Redis publish queue was full.", func(s redis.Stats) uint64 { return s.Dropped }},
			{"channelsd_redis_received_total", "Messages from other nodes received from Redis and handed to local subscribers.", func(s redis.Stats) uint64 { return s.Received }},
			{"channelsd_redis_decode_errors_total", "Messages on this node's Redis channels that were not valid envelopes (skipped).", func(s redis.Stats) uint64 { return s.DecodeErrors }},
			{"channelsd_redis_reconnects_total", "Recoveries of the Redis pub/sub connection.", func(s redis.Stats) uint64 { return s.Reconnects }},
			{"channelsd_redis_shard_resubscribes_total", "Redis Cluster: shard channels subscribed again after Redis dropped them (slot migration, failover, lost shard connection).", func(s redis.Stats) uint64 { return s.ShardResubscribes }},
			{"channelsd_redis_history_regressions_total", "Topic histories seen going back in their epoch (Redis lost broadcasts it had published: a failover to a stale replica, a restore) and moved to a new epoch.", func(s redis.Stats) uint64 { return s.HistoryRegressions }},
			{"channelsd_redis_shard_connections_lost_total", "Redis Cluster: sharded pub/sub connections that failed and were replaced.", func(s redis.Stats) uint64 { return s.ShardLost }},
			{"channelsd_redis_publish_redirects_total", "Redis Cluster: publishes a master answered MOVED or ASK (a slot moved or moving), sent again to the master the answer named.", func(s redis.Stats) uint64 { return s.PublishRedirects }},
		} {
			counter(m.name, m.help, nil, func() float64 { return float64(m.get(rs.Stats())) })
		}
		gauge("channelsd_redis_subscriptions", "Redis channels this node is subscribed to.", nil,
			func() float64 { return float64(rs.Stats().Subscriptions) })
		gauge("channelsd_redis_shard_subscriptions", "Redis Cluster: shard channels (sharded pub/sub) this node is subscribed to.", nil,
			func() float64 { return float64(rs.Stats().ShardSubscriptions) })
		gauge("channelsd_redis_connected", "1 while the Redis pub/sub connection is up, else 0.", nil,
			func() float64 { return boolean(rs.Stats().Connected) })
		gauge("channelsd_redis_publish_writers", "Publish writers running: one on a single Redis or Sentinel, one per master a publish went to on a Redis Cluster.", nil,
			func() float64 { return float64(rs.Stats().PublishWriters) })
		reg.MustRegister(gaugesFunc{
			desc: prometheus.NewDesc("channelsd_redis_publish_queue",
				"Publishes waiting in a writer's queue, not yet sent to Redis, by the writer's master (empty on a single Redis); one queue that stays up while the others are empty is a master slow to answer.",
				[]string{"master"}, nil),
			read: func() map[string]int { return rs.Stats().PublishQueues },
		})
	}
	return reg
}

// gaugesFunc is a gauge with one label whose series, and their values,
// are read at scrape time: the label's values come and go (a Redis
// Cluster's masters).
type gaugesFunc struct {
	desc *prometheus.Desc
	read func() map[string]int
}

func (g gaugesFunc) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g gaugesFunc) Collect(ch chan<- prometheus.Metric) {
	for label, n := range g.read() {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(n), label)
	}
}

// metricsHandler serves the registry in the Prometheus exposition format.
func (n *Node) metricsHandler() http.HandlerFunc {
	return promhttp.HandlerFor(n.metrics, promhttp.HandlerOpts{
		ErrorLog:      slogPromLogger{n},
		ErrorHandling: promhttp.ContinueOnError,
	}).ServeHTTP
}

// slogPromLogger hands promhttp's errors to the node's logger.
type slogPromLogger struct{ n *Node }

func (l slogPromLogger) Println(v ...any) { l.n.log.Warn("node: metrics", "err", v) }
