package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/channelsd/channelsd/channels"
	presenceredis "github.com/channelsd/channelsd/presence/redis"
	pubsubredis "github.com/channelsd/channelsd/pubsub/redis"
	goredis "github.com/redis/go-redis/v9"
)

// Config.Redis is the one way to cluster a node, as Phoenix clusters an
// application by naming the PubSub adapter once, and Presence follows the
// PubSub: the two Redis pieces only work together (the tracker sends its
// diffs through the PubSub and needs its node id and local delivery; the
// PubSub must receive the per-socket disconnect topics through one pattern
// subscription), so asking each caller to assemble them invited a node
// that half works. The lower-level constructors (pubsub/redis.New,
// presence/redis.New) stay for callers who need options not named here.

// RedisOptions tunes the cluster Config.Redis builds. Zero fields take the
// defaults noted; each is one of channelsd's flags (README
// "Configuration").
type RedisOptions struct {
	// Prefix namespaces every Redis channel and key; clusters sharing one
	// Redis need distinct prefixes. Default "channelsd" (--redis-prefix).
	Prefix string
	// ConnectTimeout is how long New keeps retrying a Redis that does not
	// answer: in a rollout the node and Redis often start together. Once
	// connected, the node reconnects by itself for as long as it lives.
	// Default DefaultRedisConnectTimeout; negative: one attempt.
	ConnectTimeout time.Duration
	// MaxMessageSize bounds one PUBLISH (--redis-max-message-size):
	// larger broadcasts are refused, larger presence diffs split. It must
	// exceed Config.MaxFrameSize by RedisRelayHeadroom, so that a
	// long-poll POST relayed to its session's node fits. Default
	// pubsub/redis.DefaultMaxMessageSize (2 MiB).
	MaxMessageSize int

	// Presence in the cluster (presence/redis.Options): heartbeat period
	// (default 5s), silence after which a node is dead and its entries
	// leave (default 3 heartbeats), and the window of a topic's changes
	// gathered into one diff and its widest value for a busy topic
	// (defaults 30ms and 2s; presence/redis.Options).
	PresenceHeartbeat   time.Duration
	PresenceDeadAfter   time.Duration
	PresenceCoalesce    time.Duration
	PresenceMaxCoalesce time.Duration
}

// DefaultRedisConnectTimeout is how long New waits for Redis by default.
const DefaultRedisConnectTimeout = 30 * time.Second

// RedisRelayHeadroom is what a relayed long-poll request adds to its body
// (method, URI, headers, envelope): RedisOptions.MaxMessageSize must
// exceed Config.MaxFrameSize by it.
const RedisRelayHeadroom = 64 << 10

// checkRedis checks the Redis settings of a cfg past its defaults.
func (cfg Config) checkRedis() error {
	if cfg.PubSub != nil || cfg.Presence != nil {
		return errors.New("node: set either Redis or PubSub and Presence, not both")
	}
	if _, err := pubsubredis.ParseAddress(cfg.Redis); err != nil {
		return fmt.Errorf("node: Redis: %w", err)
	}
	o := cfg.RedisOptions
	if o.MaxMessageSize < 0 || o.PresenceHeartbeat < 0 || o.PresenceDeadAfter < 0 || o.PresenceCoalesce < 0 || o.PresenceMaxCoalesce < 0 {
		return errors.New("node: RedisOptions: negative MaxMessageSize or presence duration")
	}
	size := cmp.Or(o.MaxMessageSize, pubsubredis.DefaultMaxMessageSize)
	if size < pubsubredis.MinMaxMessageSize || int64(size) < cfg.MaxFrameSize+RedisRelayHeadroom {
		return fmt.Errorf("node: RedisOptions.MaxMessageSize %d must be at least %d and exceed MaxFrameSize (%d) by %d",
			size, pubsubredis.MinMaxMessageSize, cfg.MaxFrameSize, RedisRelayHeadroom)
	}
	return nil
}

// connectRedis builds the Redis PubSub, retrying its first connection
// within ConnectTimeout, and the Redis tracker on it.
func connectRedis(ctx context.Context, cfg Config) (*pubsubredis.PubSub, *presenceredis.Tracker, error) {
	o := cfg.RedisOptions
	popts, err := pubsubredis.ParseAddress(cfg.Redis)
	if err != nil {
		return nil, nil, fmt.Errorf("node: Redis: %w", err)
	}
	nodeID := cmp.Or(cfg.NodeID, pubsubredis.DefaultNodeID())
	popts.Prefix, popts.NodeID, popts.Logger = o.Prefix, nodeID, cfg.Logger
	popts.MaxMessageSize = o.MaxMessageSize
	// Every socket subscribes to its id topic (disconnect by id): one
	// pattern subscription spares each connect a Redis round trip.
	popts.PatternTopics = channels.SocketIDTopicPrefix
	ps, err := dialRedis(ctx, popts, cmp.Or(o.ConnectTimeout, DefaultRedisConnectTimeout), cfg.Logger)
	if err != nil {
		return nil, nil, err
	}
	tracker, err := presenceredis.New(ctx, presenceredis.Options{
		Address:       cfg.Redis,
		Prefix:        o.Prefix,
		NodeID:        nodeID,
		PubSub:        ps,
		LocalDispatch: ps.DispatchLocal,
		Heartbeat:     o.PresenceHeartbeat,
		DeadAfter:     o.PresenceDeadAfter,
		Coalesce:      o.PresenceCoalesce,
		MaxCoalesce:   o.PresenceMaxCoalesce,
		Limits:        cfg.PresenceLimits,
		Logger:        cfg.Logger,
	})
	if err != nil {
		_ = ps.Close()
		return nil, nil, fmt.Errorf("node: %w", err)
	}
	return ps, tracker, nil
}

// dialRedis retries pubsub/redis.New with backoff until it succeeds,
// patience has passed (negative: one attempt) or ctx ends.
func dialRedis(ctx context.Context, opts pubsubredis.Options, patience time.Duration, logger *slog.Logger) (*pubsubredis.PubSub, error) {
	if patience < 0 {
		ps, err := pubsubredis.New(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("node: %w", err)
		}
		return ps, nil
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	giveUp := func(err error) error {
		if parent.Err() != nil {
			return fmt.Errorf("node: stopped waiting for redis: %w (last: %w)", parent.Err(), err)
		}
		return fmt.Errorf("node: redis unreachable for %s: %w", patience, err)
	}
	backoff := 200 * time.Millisecond
	for {
		ps, err := pubsubredis.New(ctx, opts)
		if err == nil {
			return ps, nil
		}
		if errors.Is(err, pubsubredis.ErrNotCluster) {
			return nil, fmt.Errorf("node: %w", err) // configuration: waiting cannot fix it
		}
		if goredis.IsAuthError(err) {
			// A Redis that refuses the user or password answers, and will
			// answer the same after any wait.
			return nil, fmt.Errorf("node: redis refused the user or password of --redis: %w", err)
		}
		if ctx.Err() != nil {
			return nil, giveUp(err)
		}
		logger.Warn("node: redis not reachable yet, retrying", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, giveUp(err)
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
