package redis

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults applied by New to zero Options fields.
const (
	DefaultPrefix              = "channelsd"
	DefaultPublishTimeout      = 2 * time.Second
	DefaultQueueSize           = 4096
	DefaultHealthCheckInterval = time.Second
	// DefaultMaxMessageSize bounds one PUBLISH (channel name plus
	// envelope). Redis disconnects a subscriber whose pending output
	// passes 32 MB at once, or 8 MB for a minute (its default
	// client-output-buffer-limit for pub/sub), and everything queued for
	// that node is lost: a few messages near the bound already risk it.
	// 2 MiB carries a relayed long-poll POST of the default
	// --max-frame-size (1 MiB) with its headers, and any client payload
	// under the default --max-payload-size (64 KiB).
	DefaultMaxMessageSize = 2 << 20
	// MinMaxMessageSize is the least MaxMessageSize accepted: a message of
	// the default --max-payload-size with a long topic, event and node id
	// must fit.
	MinMaxMessageSize = 64<<10 + 4<<10
)

// Options configures a PubSub. Exactly one of URL and SentinelAddrs names
// the Redis to use; ParseAddress fills them from a --redis flag value.
type Options struct {
	// URL is a redis:// or rediss:// (TLS) URL, with optional user,
	// password and database: rediss://user:secret@redis:6379/2. It is
	// parsed by go-redis's ParseURL, so its query parameters
	// (dial_timeout, pool_size, ...) work too.
	//
	// A redis-cluster:// (rediss-cluster:// over TLS) URL names a Redis
	// Cluster by some of its nodes, with optional user and password:
	// redis-cluster://user:secret@redis1:6379,redis2:6379. Its query
	// parameters are those of go-redis's ParseClusterURL.
	URL string

	// SentinelAddrs lists Redis Sentinels (host:port); MasterName is the
	// master they watch. The node then follows failovers.
	SentinelAddrs []string
	MasterName    string
	// Username, Password and DB are the master's credentials and database
	// in Sentinel mode (a URL carries its own).
	Username string
	Password string
	DB       int
	// SentinelUsername and SentinelPassword authenticate to the Sentinels
	// themselves, when they require it.
	SentinelUsername string
	SentinelPassword string

	// Prefix namespaces the Redis channels: a topic travels on
	// "<Prefix>:t:<topic>". Clusters sharing one Redis must use distinct
	// prefixes. Default "channelsd".
	Prefix string
	// NodeID names this node in envelopes; a node ignores envelopes
	// carrying its own id (Redis echoes a publisher's messages back), so it
	// must be unique in the cluster. Default: hostname-<8 hex of a uuid>.
	NodeID string
	// PublishTimeout bounds one Publish (queueing, PUBLISH and reply) and
	// every subscription command. Default 2s.
	PublishTimeout time.Duration
	// SubscribeTimeout bounds how long a first subscription to a topic
	// waits for Redis to confirm it. Default 1s.
	SubscribeTimeout time.Duration
	// QueueSize bounds the publishes waiting for the writers (on a Redis
	// Cluster, one per master: the bound is on all of them together); a Publish that
	// finds the queue full fails at once (Stats.Dropped). Default 4096.
	QueueSize int
	// HealthCheckInterval is how often the node PINGs Redis on its pub/sub
	// connection. A connection that stays silent for three to six intervals
	// is considered dead and redialed, which catches a Redis that vanished
	// without closing the TCP connection. Default 1s.
	HealthCheckInterval time.Duration
	// PatternTopics: topics beginning with this prefix are received
	// through one pattern subscription (PSUBSCRIBE), made when the PubSub
	// starts, instead of a SUBSCRIBE each. It is for topics that are many,
	// each with one subscriber, and rarely published to: the per-socket
	// id topics that carry disconnect requests, which would otherwise cost
	// every connect a Redis round trip (Subscribe waits for the first
	// subscription of a topic) and a channel per socket in Redis and in
	// go-redis. Their Subscribe and Unsubscribe send nothing to Redis.
	// The price: every node receives every message on these topics and
	// drops those it has no subscriber for. Empty: none.
	PatternTopics string
	// MaxCalls bounds the node-to-node call handlers (pubsub.Caller)
	// running at once; a call beyond it is rejected. Default
	// DefaultMaxCalls.
	MaxCalls int
	// MaxMessageSize bounds the bytes one PUBLISH carries (channel name
	// and envelope): a broadcast or a node-to-node call or answer above
	// it is refused with pubsub.ErrTooLarge and counted
	// (LimitHits()["redis_message_size"]), and received envelopes above it
	// are dropped. Default DefaultMaxMessageSize; at least
	// MinMaxMessageSize.
	MaxMessageSize int

	// Logger receives connection-state changes and (rate-limited) errors.
	// Default slog.Default().
	Logger *slog.Logger
}

// withDefaults validates o and fills its zero fields.
func (o Options) withDefaults() (Options, error) {
	switch {
	case o.URL != "" && len(o.SentinelAddrs) > 0:
		return o, errors.New("redis: set either URL or SentinelAddrs, not both")
	case o.URL == "" && len(o.SentinelAddrs) == 0:
		return o, errors.New("redis: no address: set URL or SentinelAddrs")
	case len(o.SentinelAddrs) > 0 && o.MasterName == "":
		return o, errors.New("redis: Sentinel mode needs MasterName")
	case o.PublishTimeout < 0, o.QueueSize < 0, o.HealthCheckInterval < 0, o.MaxCalls < 0, o.MaxMessageSize < 0:
		return o, errors.New("redis: negative PublishTimeout, QueueSize, HealthCheckInterval, MaxCalls or MaxMessageSize")
	case o.MaxMessageSize != 0 && o.MaxMessageSize < MinMaxMessageSize:
		return o, fmt.Errorf("redis: MaxMessageSize %d is below the least accepted, %d", o.MaxMessageSize, MinMaxMessageSize)
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.NodeID == "" {
		o.NodeID = DefaultNodeID()
	}
	if o.PublishTimeout == 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
	if o.SubscribeTimeout == 0 {
		o.SubscribeTimeout = time.Second
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.HealthCheckInterval == 0 {
		o.HealthCheckInterval = DefaultHealthCheckInterval
	}
	if o.MaxCalls == 0 {
		o.MaxCalls = DefaultMaxCalls
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	routeGoredisLogs()
	return o, nil
}

// DefaultNodeID returns the host name plus "-" and eight hex digits of a
// random uuid, so two processes on one host (or a restarted pod) differ.
func DefaultNodeID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "node"
	}
	return host + "-" + uuid.NewString()[:8]
}

// newClient builds the go-redis client. The same client serves the
// pipelined publisher (its pool) and the pub/sub connection.
func (o Options) newClient() (goredis.UniversalClient, error) {
	return o.NewClient("channelsd:" + o.NodeID)
}

// NewClient builds a go-redis client for o's address with the settings
// every channelsd component wants (no automatic retries, which could
// duplicate or reorder writes; RESP2; fail-fast dials), named name in
// CLIENT LIST. Other Redis-backed components (presence) use it so that one
// --redis value means the same connection settings everywhere.
func (o Options) NewClient(name string) (goredis.UniversalClient, error) {
	if o.Cluster() {
		co, err := parseClusterURL(o.URL)
		if err != nil {
			return nil, err
		}
		clientSettings{
			name: &co.ClientName, contextTimeout: &co.ContextTimeoutEnabled,
			maxRetries: &co.MaxRetries, dialerRetries: &co.DialerRetries,
			protocol: &co.Protocol, disableIdentity: &co.DisableIdentity,
			maint:   &co.MaintNotificationsConfig,
			buffers: [4]*int{&co.ReadBufferSize, &co.WriteBufferSize, &co.PipelineReadBufferSize, &co.PipelineWriteBufferSize},
		}.apply(name)
		// Retries and redirects are one setting in a cluster client, and
		// a retried write may run twice (see apply): a command a slot
		// move redirects fails once, and the client reloads the slot map
		// for the next, unless the URL sets max_redirects. (The PubSub's
		// writers send a redirected publish again themselves:
		// redirect.go.)
		if !co.explicitRedirects {
			co.MaxRedirects = -1
		}
		cc := goredis.NewClusterClient(co.ClusterOptions)
		cc.AddHook(slotReloader{cc})
		return cc, nil
	}
	if o.URL != "" {
		ro, err := goredis.ParseURL(o.URL)
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		clientSettings{
			name: &ro.ClientName, contextTimeout: &ro.ContextTimeoutEnabled,
			maxRetries: &ro.MaxRetries, dialerRetries: &ro.DialerRetries,
			protocol: &ro.Protocol, disableIdentity: &ro.DisableIdentity,
			maint:   &ro.MaintNotificationsConfig,
			buffers: [4]*int{&ro.ReadBufferSize, &ro.WriteBufferSize, &ro.PipelineReadBufferSize, &ro.PipelineWriteBufferSize},
		}.apply(name)
		return goredis.NewClient(ro), nil
	}
	fo := &goredis.FailoverOptions{
		MasterName:       o.MasterName,
		SentinelAddrs:    o.SentinelAddrs,
		SentinelUsername: o.SentinelUsername,
		SentinelPassword: o.SentinelPassword,
		Username:         o.Username,
		Password:         o.Password,
		DB:               o.DB,
	}
	// A failover client takes no maintenance notifications (go-redis
	// keeps them off for it).
	clientSettings{
		name: &fo.ClientName, contextTimeout: &fo.ContextTimeoutEnabled,
		maxRetries: &fo.MaxRetries, dialerRetries: &fo.DialerRetries,
		protocol: &fo.Protocol, disableIdentity: &fo.DisableIdentity,
		buffers: [4]*int{&fo.ReadBufferSize, &fo.WriteBufferSize, &fo.PipelineReadBufferSize, &fo.PipelineWriteBufferSize},
	}.apply(name)
	return goredis.NewFailoverClient(fo), nil
}

// clientSettings points at the fields of one of go-redis's option
// structs (Options, ClusterOptions, FailoverOptions) that NewClient sets
// the same way for every kind of Redis, so that the three kinds cannot
// drift apart. Fields a URL may set (dialer retries, protocol, buffer
// sizes) keep the URL's value.
type clientSettings struct {
	name                                *string
	contextTimeout, disableIdentity     *bool
	maxRetries, dialerRetries, protocol *int
	maint                               **maintnotifications.Config // nil: no such field
	buffers                             [4]*int                     // read, write, pipeline read, pipeline write
}

func (s clientSettings) apply(name string) {
	*s.name = name
	// Context deadlines must bound commands: PublishTimeout is enforced
	// through the context.
	*s.contextTimeout = true
	// A retried pipeline can run twice on the server (duplicates) or land
	// after a later batch (reordering); at-most-once is the contract, so
	// a failed publish is reported, never retried.
	*s.maxRetries = -1
	// One dial attempt per try: the pub/sub reader retries with its own
	// backoff, and a publish during an outage should fail fast.
	setIfZero(s.dialerRetries, 1)
	// RESP2: pub/sub needs nothing from RESP3, and RESP2 keeps the
	// subscribed connection on the classic path that every
	// Redis-compatible server speaks.
	setIfZero(s.protocol, 2)
	*s.disableIdentity = true
	if s.maint != nil {
		*s.maint = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	}
	// Smaller buffers than go-redis's defaults (32 KiB per regular
	// connection, 128 KiB each way per pipeline connection), unless the
	// URL sets them: a node keeps its pools' connections, and at the
	// defaults a join storm's burst of pipelines left ~5 MB of buffers
	// behind in each client, a quarter KiB per socket of a node holding
	// 15,000. Replies bigger than a buffer (a large room's HGETALL) take
	// a few more reads.
	for _, b := range s.buffers {
		setIfZero(b, clientBufferSize)
	}
}

// clientBufferSize is the read and write buffer of every connection of a
// client made by NewClient.
const clientBufferSize = 16 << 10

func setIfZero(v *int, def int) {
	if *v == 0 {
		*v = def
	}
}

// SentinelScheme is the URL scheme ParseAddress accepts for Sentinel.
const SentinelScheme = "redis-sentinel"

// ClusterScheme and ClusterTLSScheme are the URL schemes ParseAddress
// accepts for a Redis Cluster, without and with TLS.
const (
	ClusterScheme    = "redis-cluster"
	ClusterTLSScheme = "rediss-cluster"
)

// Cluster reports whether o names a Redis Cluster.
func (o Options) Cluster() bool {
	scheme, _, _ := strings.Cut(o.URL, "://")
	scheme = strings.ToLower(scheme)
	return scheme == ClusterScheme || scheme == ClusterTLSScheme
}

// clusterOptions is go-redis's ClusterOptions and whether the URL set
// max_redirects.
type clusterOptions struct {
	*goredis.ClusterOptions
	explicitRedirects bool
}

// parseClusterURL reads a redis-cluster:// or rediss-cluster:// URL. It
// is rewritten into the form go-redis's ParseClusterURL reads (the first
// node in the authority, the others as addr parameters), which brings its
// query parameters and TLS handling; net/url alone rejects a host list.
func parseClusterURL(s string) (clusterOptions, error) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(s), "://")
	goScheme := "redis"
	if strings.EqualFold(scheme, ClusterTLSScheme) {
		goScheme = "rediss"
	}
	rest, query, _ := strings.Cut(rest, "?")
	authority, path, _ := strings.Cut(rest, "/")
	if path != "" && path != "0" {
		return clusterOptions{}, fmt.Errorf("redis: cluster address: database %q: a Redis Cluster has database 0 only", path)
	}
	userinfo := ""
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, authority = authority[:i+1], authority[i+1:]
	}
	var hosts []string
	for _, h := range strings.Split(authority, ",") {
		if h == "" {
			return clusterOptions{}, errors.New("redis: cluster address: empty host in the host list")
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "6379")
			if _, _, err := net.SplitHostPort(h); err != nil {
				return clusterOptions{}, fmt.Errorf("redis: cluster address: host %q: %w", h, err)
			}
		}
		hosts = append(hosts, h)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return clusterOptions{}, fmt.Errorf("redis: cluster address: query: %w", err)
	}
	explicit := q.Has("max_redirects")
	for _, h := range hosts[1:] {
		q.Add("addr", h)
	}
	u := goScheme + "://" + userinfo + hosts[0]
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	co, err := goredis.ParseClusterURL(u)
	if err != nil {
		return clusterOptions{}, fmt.Errorf("redis: cluster address: %w", err)
	}
	// go-redis names the first host as the server of every node's
	// connection, so a node whose certificate names only itself fails
	// verification. Without a name, each connection is checked against
	// the host it dials: the one Redis announced.
	if co.TLSConfig != nil {
		co.TLSConfig.ServerName = ""
	}
	return clusterOptions{co, explicit}, nil
}

// ParseAddress maps a --redis flag value to Options (only the address
// fields are set; the caller adds NodeID, Prefix, Logger, ...). Accepted:
//
//	redis://[[user]:password@]host[:port][/db][?option=value...]
//	rediss://...                         same, over TLS
//	unix://[[user]:password@]/path/to/redis.sock[?db=N]
//	redis-sentinel://[[user]:password@]host1[:26379],host2[:26379]/mastername[/db][?sentinel_password=...&sentinel_username=...]
//	redis-cluster://[[user]:password@]host1[:6379],host2[:6379],...[?option=value...]
//	rediss-cluster://...                 same, over TLS
//	host:port                            shorthand for redis://host:port
//
// A Redis Cluster is named by any of its nodes (more than one, so that
// the node can start while one is down); the client learns the others
// from them.
// In the Sentinel form, user and password authenticate to the master;
// sentinel_username and sentinel_password to the Sentinels. A Sentinel
// without a port listens on 26379. Percent-encode special characters in
// user, password and master name.
func ParseAddress(s string) (Options, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Options{}, errors.New("redis: empty address")
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		// host:port shorthand.
		if _, _, err := net.SplitHostPort(s); err != nil {
			return Options{}, fmt.Errorf("redis: address %q: want a redis://, rediss://, unix://, %s:// or %s:// URL, or host:port", s, SentinelScheme, ClusterScheme)
		}
		return Options{URL: "redis://" + s}, nil
	}
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		if _, err := goredis.ParseURL(s); err != nil {
			return Options{}, fmt.Errorf("redis: address: %w", err)
		}
		return Options{URL: s}, nil
	case SentinelScheme:
		return parseSentinel(rest)
	case ClusterScheme, ClusterTLSScheme:
		if _, err := parseClusterURL(s); err != nil {
			return Options{}, err
		}
		return Options{URL: s}, nil
	default:
		return Options{}, fmt.Errorf("redis: address: unknown scheme %q (want redis, rediss, unix, %s, %s or %s)", scheme, SentinelScheme, ClusterScheme, ClusterTLSScheme)
	}
}

// parseSentinel parses what follows "redis-sentinel://". It is parsed by
// hand because net/url rejects a comma-separated host list.
func parseSentinel(rest string) (Options, error) {
	var o Options
	rest, query, _ := strings.Cut(rest, "?")
	authority, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		user, pass, hasPass := strings.Cut(authority[:i], ":")
		authority = authority[i+1:]
		var err error
		if o.Username, err = url.PathUnescape(user); err != nil {
			return o, fmt.Errorf("redis: sentinel address: user: %w", err)
		}
		if hasPass {
			if o.Password, err = url.PathUnescape(pass); err != nil {
				return o, fmt.Errorf("redis: sentinel address: password: %w", err)
			}
		}
	}
	for _, h := range strings.Split(authority, ",") {
		if h == "" {
			return o, errors.New("redis: sentinel address: empty host in the host list")
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "26379")
			if _, _, err := net.SplitHostPort(h); err != nil {
				return o, fmt.Errorf("redis: sentinel address: host %q: %w", h, err)
			}
		}
		o.SentinelAddrs = append(o.SentinelAddrs, h)
	}
	master, db, hasDB := strings.Cut(path, "/")
	var err error
	if o.MasterName, err = url.PathUnescape(master); err != nil || o.MasterName == "" {
		return o, errors.New("redis: sentinel address: missing master name (redis-sentinel://host:26379/mastername)")
	}
	if hasDB && db != "" {
		if o.DB, err = strconv.Atoi(db); err != nil || o.DB < 0 {
			return o, fmt.Errorf("redis: sentinel address: bad database %q", db)
		}
	}
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return o, fmt.Errorf("redis: sentinel address: query: %w", err)
		}
		for k, v := range q {
			switch k {
			case "sentinel_password":
				o.SentinelPassword = v[len(v)-1]
			case "sentinel_username":
				o.SentinelUsername = v[len(v)-1]
			default:
				return o, fmt.Errorf("redis: sentinel address: unknown parameter %q", k)
			}
		}
	}
	return o, nil
}
