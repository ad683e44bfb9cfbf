// Package redis is the clustered presence.Tracker: each node's entries
// live in Redis hashes, each node is the only writer of its own fields,
// and the cluster's view of a topic is the union of the live nodes'
// entries, so concurrent changes on different nodes never conflict (an
// observed-remove set with one replica per node).
//
// node.Config.Redis builds this Tracker with pubsub/redis's PubSub, wired
// as Options asks (the PubSub's node id and DispatchLocal); New is for
// callers who assemble the two themselves. Both packages are named redis:
// import them as pubsubredis and presenceredis.
//
// # Keys
//
//	<prefix>:p:<topic>        hash: field "<node>/<phx_ref>", value {"key","meta","t"}
//	<prefix>:nodes            hash: node -> last heartbeat, Redis server time in ms
//	<prefix>:n:<node>:topics  set: topics the node has entries on (for reaping)
//	<prefix>:n:<node>:alive   marker written with the node's entries
//	<prefix>:reap:<node>      claim (SET NX PX) of the node that removes a dead node's entries
//
// # Changes and diffs
//
// Track, Update, Untrack and UntrackAll change the node's own table at
// once (List on this node sees them when they return) and queue a join
// or leave in the topic's pending batch. One flusher goroutine, per
// topic, Options.Coalesce after the batch opened, or one window after
// the topic's previous diff if that is later (the window grows with the
// room and with a busy topic's traffic, up to Options.MaxCoalesce:
// presence's pacing; a batch quiet for half of a wide window goes out
// then), writes the batch to
// Redis in one pipeline (HSET/HDEL plus the topics set) and then
// publishes ONE presence_diff on the topic through the node's PubSub,
// which delivers it to this node's subscribers at once and to every other
// node's subscribers through Redis, once each, in order. A join and a
// leave of the same phx_ref inside one window cancel out, unless a List
// returned the join meanwhile (a socket may show it): then both go out in
// the diff, and clients apply the joins before the leaves. An update is a
// leave of the old ref plus a join of the new meta carrying phx_ref_prev.
// Writing Redis before publishing means that a node that subscribes, then
// lists, either sees a change in the hash or receives its diff.
//
// The payload is Phoenix's {"joins":{..},"leaves":{..}} plus three fields
// the JavaScript Presence class ignores (it reads joins and leaves only):
// "src" (node id and a random incarnation), "clock" (a counter per src and
// topic, starting at 1) and "last" (src has no entries left on the topic
// and restarts its clock). The tracker subscribes itself to the topics
// where its node has entries and checks each peer's clock; on a gap (a
// diff lost by Redis pub/sub, which is at most once) it re-reads the
// topic and sends a fresh presence_state to this node's subscribers only,
// through Options.LocalDispatch. The same happens for every watched topic
// after the node's own Redis outage. A topic is repaired at most once a
// second: a repair sends the whole room to every local subscriber, and
// gaps come in bursts when Redis is overloaded (publishes time out), where
// a repair per gap would add to the overload; the repair after the pause
// covers every gap found meanwhile.
//
// # Bounds
//
// Track and Update apply presence.Limits (Options.Limits): a key, a meta
// and this node's entries per topic are bounded, so a hash value is too.
// One diff is at most Options.MaxDiffSize bytes, by default what the
// PubSub carries in one Redis message: a window that gathered more goes
// out as several diffs with consecutive clocks, joins first, which
// clients applying them in order merge to the same state. Values read
// from Redis whose key or meta clients cannot be sent (presence.
// ValidEntry) are skipped, counted (Invalid) and logged, never listed or
// relayed as leaves.
//
// # Liveness
//
// Every Heartbeat each node stamps itself in <prefix>:nodes with Redis's
// clock (a Lua script calling TIME, so node clocks never matter), checks
// its alive marker and reads the nodes hash. A node whose stamp is older
// than DeadAfter is dead: List hides its entries at once; the first live
// node to win <prefix>:reap:<node> deletes its fields from every topic in
// its topics set and its bookkeeping, then publishes one presence_diff of
// leaves per topic, so every subscriber in the cluster sees them once.
//
// # Healing
//
// A missing alive marker (Redis restarted without persistence, FLUSHALL,
// or peers reaped a node that was only paused), a failed write, or the
// end of a Redis outage makes the node re-assert: it compares its table
// with its fields in Redis, deletes the extra ones, writes the missing
// ones, re-creates its heartbeat, topics set and marker, and publishes the
// corresponding joins and leaves, so the cluster view and the clients
// heal within one heartbeat. The same runs at New, which removes what a
// previous incarnation with the same NodeID left behind.
//
// # Redis Cluster
//
// The keys above lie on many slots of a Redis Cluster (each topic's hash
// on the slot of its name), where no transaction spans two slots. So the
// re-assertion and the reaper write in steps of one pipeline each, in an
// order that leaves every interrupted step to the next heartbeat: the
// re-assertion writes marker and topics before its fields, the reaper
// deletes fields before the marker. And every clock reading that judges
// a heartbeat runs on the shard of the nodes hash, whose clock stamped
// it.
//
// # List
//
// List(topic) is one round trip, none when the node last found itself
// the only live one (the other rows would all be hidden): a pipeline of
// HGETALL of the topic and,
// at most once per quarter second (less with a short DeadAfter), of the
// nodes hash and of Redis's clock; Lists in between reuse that reading,
// so that the nodes hash's shard does not take every List of a Redis
// Cluster. It keeps the fields of nodes whose heartbeat is younger than
// DeadAfter, takes this node's entries from its own table,
// and groups them by key in track order (time of the track/update, then
// field). AppendState writes the same rows as a presence_state payload
// directly (presence.StateAppender), as a join pushes it.
//
// Every join that pushes presence_state lists its room, so a join storm
// on a room of n users would read n² entries. Lists of one topic that
// arrive together therefore share one read, but never a read that had
// already begun when they were called (that one might miss a change whose
// diff they did not subscribe in time to receive): they wait for the next
// read, which starts when the running one ends. Each topic has at most
// one read in flight, and a List waits at most two round trips.
//
// # Close
//
// Close stops the goroutines, deletes the node's fields, heartbeat and
// bookkeeping, and publishes their leaves: a draining node's users leave
// everywhere at once. Close the tracker before the PubSub.
package redis
