package redis

// Stats is a snapshot of a PubSub's counters.
type Stats struct {
	// Published counts Publish calls whose envelope Redis acknowledged.
	Published uint64
	// PublishErrors counts Publish calls that failed for any reason but a
	// full queue: Redis error, timeout, canceled context, disconnected.
	PublishErrors uint64
	// Dropped counts Publish calls refused because the queue was full.
	Dropped uint64
	// PublishWriters is the number of publish writers running: one on a
	// single Redis or Sentinel, one per master that a publish went to on
	// a Redis Cluster. PublishQueues is how many publishes wait in each
	// one's queue (not yet sent), by its master's address ("" on a single
	// Redis); all of them together are bounded by Options.QueueSize.
	PublishWriters int
	PublishQueues  map[string]int
	// Received counts envelopes from other nodes handed to local
	// subscribers (this node's echoes are not counted).
	Received uint64
	// DecodeErrors counts messages on this node's channels that were not
	// valid envelopes, or carried what no client may receive (a JSON
	// payload that is not valid JSON in UTF-8, an event or topic that is
	// not UTF-8), or were above MaxMessageSize; they are logged and
	// skipped.
	DecodeErrors uint64
	// TooLarge counts the broadcasts, calls and call answers this node
	// refused to send above MaxMessageSize.
	TooLarge uint64
	// Reconnects counts recoveries of the pub/sub connection.
	Reconnects uint64
	// Subscriptions is the number of Redis channels the node holds.
	Subscriptions int
	// Connected is false while the pub/sub connection is down.
	Connected bool
	// ShardSubscriptions is the number of shard channels the node holds
	// on a Redis Cluster (sharded pub/sub); ShardResubscribes counts the
	// ones it subscribed again after Redis dropped them (a slot
	// migration, a failover, a lost shard connection), ShardLost the
	// shard connections that failed.
	ShardSubscriptions           int
	ShardResubscribes, ShardLost uint64
	// PublishRedirects counts the publishes a Redis Cluster master
	// answered MOVED or ASK (a slot that moved, or is moving), which the
	// node sent again to the master the answer named.
	PublishRedirects uint64
	// CallsSent counts node-to-node calls this node made; CallsServed
	// the calls it answered; CallsRejected those it refused (no handler,
	// or MaxCalls running); ReplyErrors the answers it could not send.
	CallsSent, CallsServed, CallsRejected, ReplyErrors uint64
	// HistoryPublished counts broadcasts that got a history position
	// (also counted in Published); HistoryReads the ReadHistory calls
	// Redis answered, HistoryMessagesRead the messages they returned;
	// ScriptReloads the times Redis had lost the history scripts
	// (NOSCRIPT) and was sent them in full.
	HistoryPublished, HistoryReads, HistoryMessagesRead, ScriptReloads uint64
	// HistoryRegressions counts the times this node saw a topic's history
	// go back in its epoch (Redis lost broadcasts it had published: a
	// failover to a replica that had not received them, or a restore)
	// and moved it to a new epoch (see History in the package doc).
	HistoryRegressions uint64
}

// Stats returns the current counters.
func (p *PubSub) Stats() Stats {
	st := Stats{
		Published:      p.published.Load(),
		PublishErrors:  p.publishErrors.Load(),
		Dropped:        p.dropped.Load(),
		PublishWriters: p.writers.count(),
		PublishQueues:  p.writers.queues(),
		Received:       p.received.Load(),
		DecodeErrors:   p.decodeErrors.Load(),
		TooLarge:       p.tooLarge.Load(),
		Reconnects:     p.reconnects.Load(),
		Subscriptions:  int(p.subscribed.Load()),
		Connected:      !p.lost.Load(),
		CallsSent:      p.calls.sent.Load(),
		CallsServed:    p.calls.served.Load(),
		CallsRejected:  p.calls.rejected.Load(),
		ReplyErrors:    p.calls.failed.Load(),

		HistoryPublished:    p.hist.published.Load(),
		HistoryReads:        p.hist.reads.Load(),
		HistoryMessagesRead: p.hist.read.Load(),
		ScriptReloads:       p.hist.reloads.Load(),
		HistoryRegressions:  p.regress.regressions.Load(),
	}
	if p.shards != nil {
		st.ShardSubscriptions = int(p.shards.held.Load())
		st.ShardResubscribes = p.shards.resubscribes.Load()
		st.ShardLost = p.shards.lostCount.Load()
		st.PublishRedirects = p.redirected.Load()
	}
	return st
}
