package redis

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	pubsubredis "github.com/channelsd/channelsd/pubsub/redis"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultPrefix    = "channelsd"
	DefaultHeartbeat = 5 * time.Second
	DefaultCoalesce  = 30 * time.Millisecond
	// DefaultMaxCoalesce is the widest window of a busy topic, as in
	// memory (presence.DefaultMaxCoalesce): a join storm into busy rooms
	// writes fewer diffs the wider it is. A batch that has been quiet for
	// half of a window of a second or more goes out then, so every node's
	// lists agree about a second after a storm's last join.
	DefaultMaxCoalesce = presence.DefaultMaxCoalesce
	DefaultTimeout     = 2 * time.Second
	// DefaultMaxDiffSize applies when the PubSub does not say what it
	// carries: pubsub/redis's default, less room for the envelope.
	DefaultMaxDiffSize = pubsubredis.DefaultMaxMessageSize - 4<<10
)

// Options configures a Tracker.
type Options struct {
	// Client is the go-redis client the tracker uses for its hashes. The
	// caller keeps ownership (Close does not close it). Either Client or
	// Address must be set.
	Client goredis.UniversalClient
	// Address is a --redis value as accepted by pubsub/redis.ParseAddress
	// (redis://, rediss://, unix://, redis-sentinel://, host:port). The
	// tracker then builds, and closes on Close, its own client.
	Address string

	// Prefix namespaces the keys; use the same value as the PubSub.
	// Default "channelsd".
	Prefix string
	// NodeID names this node; it must be unique in the cluster. Required.
	// Use the PubSub's node id.
	NodeID string
	// PubSub carries the presence_diff broadcasts: the node's own PubSub,
	// which delivers locally at once and relays to the other nodes.
	// Required.
	PubSub pubsub.PubSub
	// LocalDispatch, when set, delivers a message to this node's local
	// subscribers only (for the Redis PubSub, its registry's Dispatch).
	// The tracker uses it for anti-entropy: when it may have missed diffs
	// on a topic (a gap in a peer's clock, or its own Redis outage) it
	// re-reads the topic and sends a fresh presence_state to this node's
	// subscribers. Without it the Redis-side state still heals, but
	// clients keep what they have until they rejoin.
	LocalDispatch func(*pubsub.Message)

	// Heartbeat is how often the node writes its heartbeat, checks that
	// its entries are still in Redis and looks for dead nodes. Default 5s.
	Heartbeat time.Duration
	// DeadAfter is how long a node may stay silent before it is declared
	// dead and its entries removed. Default 3×Heartbeat.
	DeadAfter time.Duration
	// Coalesce is the window over which the changes of one topic are
	// gathered into one presence_diff. Default 30ms.
	Coalesce time.Duration
	// MaxCoalesce bounds the window of a busy topic. Every diff goes to
	// every subscriber of its topic, so a join storm into a big room
	// costs diffs × subscribers deliveries: a topic's batch waits at
	// least presence.DiffWindow after its previous diff (10ms per member
	// of the room as last listed), and a topic whose diffs reach more
	// than presence.DeliveriesPerChange members per change doubles that,
	// up to MaxCoalesce (presence.AdaptWindow); a batch quiet for half a
	// window of a second or more goes out early. Default 2s; equal to
	// Coalesce keeps the window fixed.
	MaxCoalesce time.Duration
	// Timeout bounds each background Redis round trip and publish.
	// Default 2s.
	Timeout time.Duration

	// Limits bounds the keys, metas and entries per topic this node
	// tracks (presence.Limits; zero fields take its defaults).
	Limits presence.Limits
	// MaxDiffSize bounds one presence_diff payload, in bytes: a batch
	// whose diff would be larger goes out as several diffs, each under
	// it, in order. Default: what the PubSub carries in one message
	// (pubsub/redis's MaxMessageSize less the envelope), else
	// DefaultMaxDiffSize.
	MaxDiffSize int

	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	switch {
	case o.Client == nil && o.Address == "":
		return o, errors.New("presence/redis: set Client or Address")
	case o.Client != nil && o.Address != "":
		return o, errors.New("presence/redis: set Client or Address, not both")
	case o.NodeID == "":
		return o, errors.New("presence/redis: NodeID is required")
	case o.PubSub == nil:
		return o, errors.New("presence/redis: PubSub is required")
	case o.Heartbeat < 0, o.DeadAfter < 0, o.Coalesce < 0, o.MaxCoalesce < 0, o.Timeout < 0:
		return o, errors.New("presence/redis: negative duration")
	case o.MaxDiffSize < 0:
		return o, errors.New("presence/redis: negative MaxDiffSize")
	}
	o.Limits = o.Limits.WithDefaults()
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.DeadAfter == 0 {
		o.DeadAfter = 3 * o.Heartbeat
	}
	if o.DeadAfter <= o.Heartbeat {
		return o, fmt.Errorf("presence/redis: DeadAfter (%s) must exceed Heartbeat (%s)", o.DeadAfter, o.Heartbeat)
	}
	if o.Coalesce == 0 {
		o.Coalesce = DefaultCoalesce
	}
	if o.MaxCoalesce == 0 {
		o.MaxCoalesce = DefaultMaxCoalesce
	}
	o.MaxCoalesce = max(o.MaxCoalesce, o.Coalesce)
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// newClient builds a client from a --redis address with pubsub/redis's
// settings (RESP2, no retries: the tracker's own re-assertion heals lost
// writes, a retried pipeline could reorder them).
func newClient(address, nodeID string) (goredis.UniversalClient, error) {
	a, err := pubsubredis.ParseAddress(address)
	if err != nil {
		return nil, err
	}
	return a.NewClient("channelsd-presence:" + nodeID)
}
