// Package redis is the clustered pubsub.PubSub: it relays broadcasts
// between channelsd nodes through Redis pub/sub (github.com/redis/go-redis/v9).
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
// The envelope (see envelope.go) is a small binary header followed by the
// payload verbatim: origin node id, a per-node sequence number (message id
// = origin + sequence), the sender subscriber for broadcast_from, the
// event and the binary flag. broadcast_from excludes the sender on its
// origin node only; on the other nodes nobody is excluded.
//
// # Subscriptions
//
// A node holds one Redis pub/sub connection. Subscribe and Unsubscribe
// change the registry and return; a single reconciler goroutine makes the
// node's Redis subscriptions follow the registry: SUBSCRIBE when a topic
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
// every node. All PUBLISHes go through one writer goroutine that sends
// pipelined batches one at a time, waiting for each batch's replies
// before the next; Redis applies them in that order and delivers them,
// in order, on each subscriber's single connection. Nothing orders
// broadcasts from different nodes.
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
// Redis Cluster is not supported: plain PUBLISH in a cluster is broadcast
// to every shard. Sharded pub/sub (SSUBSCRIBE/SPUBLISH) is the way to
// scale past one Redis.
package redis
