// Package redis is the clustered pubsub.PubSub: it relays broadcasts
// between channelsd nodes through Redis pub/sub (github.com/redis/go-redis/v9).
//
// An application clusters a node with node.Config.Redis, which builds this
// PubSub and presence/redis's Tracker on it, wired as they must be; New
// is for callers who need options the node does not name. This package
// and presence/redis are both named redis: import them as pubsubredis and
// presenceredis.
//
// # A broadcast's path
//
// Publish delivers to this node's subscribers at once, through the shared
// pubsub.Registry, whatever state Redis is in. It then PUBLISHes one
// envelope on the Redis channel "<prefix>:t:<topic>" and waits (at most
// Options.PublishTimeout) for Redis to acknowledge it; an error tells the
// caller that other nodes may have missed the broadcast. Every node with
// at least one local subscriber of the topic is SUBSCRIBEd to that
// channel; it drops envelopes stamped with its own node id (Redis echoes
// them back) and dispatches the rest to its subscribers.
//
// # History
//
// A topic the history policy (SetHistoryPolicy, pubsub.History) gives
// history takes another path. Publish hands the writer one run of a Lua
// script that, in one step on Redis, assigns the
// topic's next offset, appends the envelope to the topic's stream
// "<prefix>:h:{<topic>}:s" (trimmed to about Size entries), renews the
// TTL of the stream and of its meta hash "<prefix>:h:{<topic>}:m" (epoch
// and newest offset), and PUBLISHes the envelope, with the position in
// its extension area, on the topic's channel. Publish returns the
// position once Redis answers; nothing is delivered before that. Every
// node, the origin too, delivers the broadcast from its subscription,
// with Message.Pos, so every subscriber sees one offset order.
// ReadHistory is one more script: the epoch, the newest offset and the
// entries after a position (or the last N), never the whole stream. A
// history whose meta hash is gone (TTL, restart, FLUSHALL) starts again
// at offset 1 in a new epoch. The script runs as EVALSHA; a Redis that
// answers NOSCRIPT is sent it once in full (Stats.ScriptReloads). A
// history that goes back in its epoch (Redis lost broadcasts it had
// published: a failover to a replica that had not received them, a
// restore) shows to each node subscribed to the topic as a new broadcast
// at an offset it already delivered another one at, and to a node that
// had published one of the lost broadcasts as a publish whose position
// is not past the last one it was given; the node
// moves the history to a new epoch (dropping its stream), counts it once
// whichever way it saw it (Stats.HistoryRegressions), and delivers that
// broadcast, and the rest of the lost epoch, in an epoch of its own that
// no history has. A broadcast overtaken by a
// later one on another connection (the switch to sharded pub/sub, below)
// or delivered twice is not taken for one, within 32 offsets of the
// newest delivered.
//
// # Redis Cluster
//
// A redis-cluster:// URL (Options.URL) runs the PubSub on a go-redis
// cluster client, and topic broadcasts on sharded pub/sub: a topic's
// shard channel is "<prefix>:t:{<topic>}", in the slot of its history
// keys. A broadcast is an SPUBLISH on it (the history script SPUBLISHes
// too: one slot for its keys and its channel), which only the shard that
// owns the slot handles. The node holds one sharded pub/sub connection
// per master it has topics on, and SSUBSCRIBEs each topic on the master
// of its slot, one command per slot (Redis refuses an SSUBSCRIBE that
// spans slots), routed by the slot map go-redis's cluster client keeps,
// the one map the PubSub goes by: its publishes and history reads of a
// topic go where it subscribed the topic. A shard
// connection that fails (read error, silence, an error reply such as
// MOVED after a stale map) is closed, not redialed in place, and its
// topics are routed again once the map has been read again: the
// failover case. A slot that
// migrates, or whose master becomes a replica, makes Redis SUNSUBSCRIBE
// the node from its channels; the node subscribes them again on the new
// owner (Stats.ShardResubscribes). New fails with ErrRedisTooOld when a
// master runs a Redis older than 7, and with ErrNotCluster when the URL
// reaches a Redis without cluster support.
//
// The node's own topics ("phx:...": node calls, cluster reports, socket
// ids, presence control) and pattern topics stay on classic
// PUBLISH/SUBSCRIBE on the one classic connection, which a Redis Cluster
// relays to every shard; each PUBLISH goes to the master of its
// channel's slot, as a keyed command would, because two publishes of a
// channel taken by two masters can reach a subscriber in either order
// over the cluster bus. A cluster counts a PUBLISH's receivers on that
// master only, so a call is not failed for having none (Call waits for
// its answer).
//
// Sharded pub/sub is gated (FormShard, level 2: see Cross-node
// compatibility): a node publishes a topic's broadcast with SPUBLISH only
// while every live node reads shard channels, and with PUBLISH on the
// classic channel otherwise; a node of this release SUBSCRIBEs the
// classic channel of each topic as well as SSUBSCRIBing its shard
// channel, so each broadcast reaches it once either way. A single Redis
// or Sentinel uses classic pub/sub only.
//
// The envelope is a small binary header followed by the
// payload verbatim: origin node id, a per-node sequence number (message id
// = origin + sequence), the sender subscriber for broadcast_from, the
// event and the binary flag. broadcast_from excludes the sender on its
// origin node only; on the other nodes nobody is excluded.
//
// # Subscriptions
//
// A node holds one classic Redis pub/sub connection (and on a Redis
// Cluster a shard connection per master, above). Subscribe and
// Unsubscribe change the registry and return; a single reconciler
// goroutine makes the node's Redis subscriptions follow the registry:
// SUBSCRIBE (and SSUBSCRIBE) when a topic
// gets its first local subscriber, UNSUBSCRIBE when its last one leaves,
// coalescing bursts into one command. A join therefore does not wait for
// Redis; broadcasts from other nodes published before Redis applied the
// SUBSCRIBE are missed (Sync waits for it when that matters, in tests for
// instance). The subscription itself is never lost: it is retried until
// applied and replayed after every reconnect.
//
// # Ordering
//
// Messages published on one node to one topic arrive in publish order on
// every node. A topic's PUBLISHes go through one writer goroutine that
// sends pipelined batches one at a time, waiting for each batch's
// replies before the next; Redis applies them in that order and delivers
// them, in order, on each subscriber's single connection. Nothing orders
// broadcasts from different nodes.
//
// A single Redis or Sentinel has one writer. A Redis Cluster has one per
// master, each with its own queue: a request goes to the writer of the
// master that owns its slot (its channel's, or its topic's hash tag for
// a shard channel and the history keys) in the cluster client's slot
// map, so a master that stops answering holds its own slots' publishes
// only, not the other masters'. When the map moves a slot to another
// master, the slot's next publishes wait until the old writer has
// answered what it had queued before the move, so a topic keeps its
// order across a failover or a migration; that wait ends by the old
// writer's publish timeout. A publish that a master answers MOVED or ASK
// (the slot moved, or is moving, and the map was stale) was not run: the
// writer sends it again, once, to the master the answer names, before its
// batch completes, so it stays ahead of the slot's later publishes
// (Stats.PublishRedirects). A writer that no slot is routed to any more
// (its master died or became a replica, or its slots all moved) answers
// what it holds and stops. Options.QueueSize bounds the requests queued in all writers
// together.
//
// # Failure
//
// Redis pub/sub is at-most-once: a node cut off from Redis misses what is
// published meanwhile. While the connection is down the node keeps
// serving its local subscribers and local broadcasts; Publish fails fast
// with ErrDisconnected, Ping (for /readyz) fails, and the node redials
// with backoff, logging "redis: connection lost" and then
// "redis: reconnected after <downtime>". On reconnect it subscribes again
// to exactly the topics that have local subscribers at that moment. The
// publish queue is bounded (ErrQueueFull) and no goroutine is started per
// publish, so an outage costs no memory growth.
//
// # Bounds on what travels
//
// One PUBLISH carries at most Options.MaxMessageSize bytes (channel name
// and envelope, default 2 MiB): Redis disconnects a subscriber whose
// pending output passes its pub/sub output buffer limit (32 MB at once by
// default), losing everything queued for that node, so a few huge
// messages would cut every node off. A broadcast above the bound is
// refused before any delivery (pubsub.ErrTooLarge), and so are node calls
// and their answers. What a node receives is checked as the client entry
// points check it: an envelope above the bound, an event or topic that is
// not UTF-8, or a text payload that is not valid JSON in UTF-8 is dropped
// and counted (Stats.DecodeErrors), never dispatched.
//
// # Cross-node compatibility
//
// Every form one node writes for another is read by the previous
// release, from b847059 on, so that a rolling update (one pod at a time,
// either way) loses no broadcast, presence change or long-poll request.
// The forms, one Form constant each: the envelope and its channel names,
// node call and reply frames, the long-poll relay frames and session
// tokens of package transport, presence hash values and diffs (package
// presence/redis), and the cluster reports package node publishes on
// "phx:nodes". Three rules keep it so:
//
//  1. Readers ignore what they do not know. Unknown JSON fields, unknown
//     events on internal topics, unknown call services (answered
//     "rejected" at once), relay pseudo-headers, the records of an
//     extension area (the envelope's, behind flag bit 1, whose tag 1, a
//     history position, the release of history reads; a call frame's,
//     kinds 'C' and 'R'; a version 2 token's), and unknown reply statuses
//     (an error answer at once, never a wait for the deadline) are not
//     decode errors. A later release extends a form there.
//  2. A version only gates what an old node truly cannot read. A change
//     that rule 1 absorbs needs no new level. A new level is for what an
//     older reader would drop or misparse: a new envelope version or flag
//     bit, a new call kind or reply status, a positional field, a new
//     token version, a retyped JSON field, new channel names.
//  3. A writer uses a new form only after every live node has announced
//     it reads it. Each node's cluster report announces "reads", the
//     level of each form its build reads (BuildReads; each Form
//     constant documents its levels); a report without it, or
//     without a form, means the floor (b847059's readers, FloorReads).
//     The node's Gate answers MayWrite(form, level) from the reports
//     heard within three report intervals and any other sign of life
//     (a call received), and falls back to the floor's form as soon as a
//     node that reads less reports. During its first three intervals it
//     says yes only when it knows whom to wait for: the roster of nodes
//     live at its start, the fresh heartbeats of the presence nodes hash
//     ("<prefix>:nodes", written by every release since b847059 under
//     the PubSub's node id), each of which has announced the level. A
//     node answers a report from a node it had not heard (or a restart
//     of it) with its own at once, so a starting node hears every node
//     of this release within a round trip; a roster node that stays
//     silent (an older release between reports, a node that died) or a
//     roster that cannot be read keeps the Gate at the floor for the
//     three intervals. An answer to one node (a call's reply) asks
//     NodeReads for that node alone. Readers keep reading every older
//     level down to the floor.
//
// What must not change while b847059 is the floor, gated or not: the
// heartbeat value in "<prefix>:nodes" (Redis time in milliseconds: a
// b847059 node takes anything else for a dead node and reaps its
// presences), the Redis key names the reaper and healing rely on
// ("<prefix>:p:<topic>", "<prefix>:n:<node>:topics", "<prefix>:n:<node>:alive",
// "<prefix>:reap:<node>") and the presence field name "<node>/<ref>",
// the existing fields of the cluster report (it carries the announcement,
// so it cannot wait for one: fields are added, never retyped or removed,
// and it travels in the floor's envelope), and the envelope, call and
// token forms this release writes by default. Moving the floor is a
// release note ("rolling updates from release X on") and a change of
// FloorReads; test/cluster's TestRollingUpgrade and TestRollingRollback
// run the update from the floor (UPGRADE_FROM names the commit) and
// must pass for every change to a form.
//
// History and the Gate: a history position travels in the envelope's
// extension area, level 3 of form "envelope", which the release before
// history reads and skips, and b847059 refuses. While the Gate does not
// allow level 3 the script PUBLISHes the floor's form, without the
// position: subscribers then get no Message.Pos, though the stream keeps
// every position and ReadHistory returns them, so a client that recovers
// later gets those broadcasts again. Next to nodes that all read level 3
// that lasts a round trip after a node starts (the roster, above), not
// three report intervals. A node that predates
// history drops its own echoes and delivers its broadcasts locally at
// once; a history topic's broadcasts from such a node carry no offset
// and are not retained. The stream and meta keys are new and read by
// this release only.
//
// # Addresses
//
// ParseAddress maps a --redis flag value to Options:
//
//	redis://[[user]:password@]host[:port][/db]
//	rediss://...                 the same over TLS
//	unix://[[user]:password@]/path/redis.sock[?db=N]
//	redis-sentinel://[[user]:password@]host1[:26379],host2[:26379]/mastername[/db][?sentinel_password=...]
//	host:port                    shorthand for redis://host:port
//
// redis://, rediss:// and unix:// are go-redis URLs (its query options
// such as dial_timeout apply). redis-sentinel:// names the Sentinels,
// comma-separated, then the master name and optionally the database. The
// user and password there authenticate to the master; sentinel_username
// and sentinel_password, when the Sentinels require their own. TLS to a
// Sentinel-managed master is not available through the URL form.
//
// redis-cluster:// and rediss-cluster:// name a Redis Cluster by some of
// its nodes (see Redis Cluster above).
package redis
