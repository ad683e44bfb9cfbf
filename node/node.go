package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
	"github.com/channelsd/channelsd/transport"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is everything a node needs. Zero values take the defaults noted,
// which are channelsd's flag defaults; for the limits, README "Limits"
// lists them all, and a negative value turns one off.
type Config struct {
	Addr       string // listen address; default ":4000"
	SocketPath string // base path of the socket transports; default "/socket"

	AllowedOrigins []string      // empty: any origin
	IdleTimeout    time.Duration // default 60s
	MaxFrameSize   int64         // default 1 MiB
	MaxChannels    int           // per socket; default 100
	// APIKey, when set, is required by the operators' endpoints (/api/*,
	// /metrics, /dashboard) as "Authorization: Bearer <key>"; when empty
	// they serve loopback clients only.
	APIKey string
	// MetricsPublic serves /metrics to every client, key or not: for a
	// Prometheus that scrapes from other hosts without the key.
	MetricsPublic bool

	// Limits (README "Limits"). Zero takes the default noted, negative
	// means no limit.
	MaxSockets         int           // WebSocket connections plus long-poll sessions; default 19000
	MaxPendingUpgrades int           // WebSocket handshakes in progress; default 1000
	HandshakeTimeout   time.Duration // reading the request headers, and the connect callback; default 10s
	MaxPayloadSize     int           // bytes of a client message's payload; default 64 KiB
	MaxTopicLength     int           // bytes; default 256
	MaxEventLength     int           // bytes; default 128
	MaxRefLength       int           // bytes of a join_ref or ref as JSON text; default 64
	// MaxMessagesPerSecond rate-limits each socket's messages, with Burst
	// at once (zero: 2 × the rate); see channels.EndpointConfig. Default
	// 100; negative: no rate limit.
	MaxMessagesPerSecond float64
	Burst                int
	RateAbuseAfter       time.Duration // a socket over its rate this long is closed (1008); default 10s
	// JoinTimeout bounds how long a join a channel answers later
	// (channels.Pending) waits for its answer; see
	// channels.EndpointConfig. Default 10s.
	JoinTimeout         time.Duration
	LongPollMaxSessions int // default 10000
	LongPollMaxBuffered int // messages per session; default 1000
	// LongPollMaxBufferedBytes bounds a session's buffer in bytes (default
	// 4 MiB), LongPollMaxAnswerBytes one poll answer (default and at most
	// about 3 MiB, for the relay), LongPollIOTimeout reading a POST body
	// and writing an answer (default 10s); see transport.LongPollConfig.
	LongPollMaxBufferedBytes int
	LongPollMaxAnswerBytes   int
	LongPollIOTimeout        time.Duration
	// LongPollMaxBodyBuffers bounds the bytes of long-poll POST bodies
	// held on the node; default 64 MiB, negative: no limit.
	LongPollMaxBodyBuffers int64
	// LongPollMaxSessionsPerAddr bounds the live long-poll sessions of
	// one client address (default 100; IPv6 by /64), which is read from
	// X-Forwarded-For only behind TrustedProxies (CIDRs; empty: never).
	LongPollMaxSessionsPerAddr int
	TrustedProxies             []string

	// The HTTP server's bounds on connections that are not sockets
	// (API calls, probes, the home page). Zero takes the default noted,
	// negative means none.
	HTTPIdleTimeout    time.Duration // a keep-alive connection idle between requests; default 60s
	HTTPRequestTimeout time.Duration // reading a body, writing an answer other than a socket's; default 30s
	MaxHeaderBytes     int           // a request's line and headers; default 32 KiB (HTTP 431 beyond)
	// MaxConnections bounds the TCP connections open at once, WebSocket
	// ones included; default MaxSockets + 500 (no bound when MaxSockets
	// has none).
	MaxConnections int

	// MessageTimeout bounds a WebSocket message that does not arrive whole
	// at once, from its first frame to its last; default 30s (see
	// transport.WebSocketConfig).
	MessageTimeout time.Duration
	// MaxMessageBuffers bounds the bytes of WebSocket messages in progress
	// on the node; default 64 MiB.
	MaxMessageBuffers int64
	// MaxURLLength bounds a WebSocket upgrade's request target; default
	// 16 KiB.
	MaxURLLength int

	// DrainWindow spreads the closing of the sockets when the node drains
	// (Drain, Shutdown): they are closed in batches evenly over it. Zero
	// closes them all at once (channelsd's --drain-window is 20s).
	DrainWindow time.Duration
	// ShutdownTimeout bounds what Shutdown does after the drain window:
	// waiting for the last sockets to end, stopping the HTTP server,
	// closing presence and pubsub. Default 10s. A whole Shutdown takes at
	// most DrainWindow plus ShutdownTimeout (less when the drain has begun
	// earlier, through Drain).
	ShutdownTimeout time.Duration

	// NodeID names this node (long-poll tokens carry it, and the cluster
	// view). Default: the PubSub's node id when it is a pubsub.Caller,
	// else the host name.
	NodeID string

	// ReportInterval is how often the node broadcasts its figures
	// (sockets, message rates) on the topic "phx:nodes", where every node
	// keeps the latest report of every other: the cluster view that the
	// rebalancer and the dashboard read. Default 2s.
	ReportInterval time.Duration
	// Rebalance moves sockets off a node far above the cluster's mean;
	// off by default.
	Rebalance RebalanceConfig

	Router        *channels.Router
	SocketHandler channels.SocketHandler // nil: anonymous sockets
	// Home is served at "/" (the demo page); nil serves nothing there.
	Home http.Handler

	// Redis clusters the node through Redis: New connects,
	// retrying a Redis that does not answer yet, and builds both the Redis
	// PubSub and the Redis presence tracker on it. The value is what
	// channelsd's --redis takes: redis://[user:pass@]host:6379[/db],
	// rediss://... (TLS), unix:///path, redis-sentinel://host1,host2/master
	// or host:port. Empty: one node in memory. Set either Redis or
	// PubSub and Presence, not both.
	Redis string
	// RedisOptions tunes what Redis builds; zero fields take defaults.
	RedisOptions RedisOptions

	// PubSub and Presence default to the in-memory implementations (or
	// the Redis ones, with Redis). Presence() returns the tracker in use.
	PubSub   pubsub.PubSub
	Presence presence.Tracker
	// PresenceLimits bounds the keys, metas and entries of the tracker
	// the node builds (in memory or Redis); zero fields take the
	// presence.Limits defaults. A Presence passed in carries its own.
	PresenceLimits presence.Limits
	// PresenceMaxCoalesce is the widest window between two presence
	// diffs of a topic of the in-memory tracker the node builds
	// (presence.LocalOptions.MaxCoalesce; RedisOptions carries the Redis
	// tracker's). Zero: presence.DefaultMaxCoalesce; negative: every
	// change goes out at once.
	PresenceMaxCoalesce time.Duration

	// History gives the topics its rules match a history of their
	// broadcasts (README "Guarantees and their limits"). The rules come
	// before the Router's (channels.Router.History), so an operator can
	// change or turn off (size 0) what a channel asks for. Any history
	// needs a PubSub that implements pubsub.History.
	History []pubsub.HistoryRule

	// Collectors are served at /metrics with the node's own metrics: an
	// application's, such as channels/proxy's Metrics.
	Collectors []prometheus.Collector

	Logger *slog.Logger
}

// Node is one channelsd process: it wires the endpoint, the transports and
// the HTTP API, and owns their lifecycle (Start, then Shutdown once).
type Node struct {
	cfg      Config
	log      *slog.Logger
	endpoint *channels.Endpoint
	ws       *transport.WebSocketHandler
	lp       *transport.LongPollHandler
	mux      *http.ServeMux
	server   *http.Server
	metrics  *prometheus.Registry
	slots    *transport.Slots
	sessions sessionKeys // dashboard sessions and join tickets

	// Connections still reading their first request headers, and how many
	// the server cut at HandshakeTimeout (handshake.go).
	handshakes        sync.Map // net.Conn -> time.Time
	handshakeTimeouts atomic.Uint64

	conns        connTracker   // the server's connections (httpserver.go)
	bodyTimeouts atomic.Uint64 // request bodies cut at HTTPRequestTimeout

	mu       sync.Mutex
	listener net.Listener
	draining atomic.Bool
	// gated: the PubSub writes its cross-node forms through the Gate
	// (clusterLoop); until then it writes the floor's.
	gated    atomic.Bool
	shutdown sync.Once

	drainMu     sync.Mutex
	drain       *drain        // set once the drain has begun
	drainClosed atomic.Uint64 // sockets the drain has closed

	started     time.Time
	cluster     *clusterView
	stopCluster context.CancelFunc // set by Start
	clusterDone chan struct{}      // closed when clusterLoop returns
	rebalanced  atomic.Uint64      // sockets asked to move to other nodes
	// messagesOut, when set, counts frames sent to clients (the report
	// and dashboard show its rate).
	messagesOut func() uint64
}

// New builds a node from cfg without listening yet. With Config.Redis it
// connects to Redis first, waiting up to RedisOptions.ConnectTimeout;
// NewWithContext can cut that wait short.
func New(cfg Config) (*Node, error) { return NewWithContext(context.Background(), cfg) }

// NewWithContext is New with a context that bounds what New waits for:
// connecting to Redis (Config.Redis). Canceling ctx stops the retries;
// it has no effect once NewWithContext has returned.
func NewWithContext(ctx context.Context, cfg Config) (n *Node, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.Redis != "" {
		ps, tracker, rerr := connectRedis(ctx, cfg)
		if rerr != nil {
			return nil, rerr
		}
		cfg.PubSub, cfg.Presence, cfg.NodeID = ps, tracker, ps.NodeID()
		// What the node built, it closes when it cannot start.
		defer func() {
			if err != nil {
				_ = tracker.Close()
				_ = ps.Close()
			}
		}()
	}
	return build(cfg)
}

// withDefaults fills cfg's zero fields and checks what needs no
// connection, so that a wrong setting shows before New waits for Redis.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Addr == "" {
		cfg.Addr = ":4000"
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = "/socket"
	}
	cfg.SocketPath = "/" + strings.Trim(cfg.SocketPath, "/")
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.MaxFrameSize == 0 {
		cfg.MaxFrameSize = 1 << 20
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	defaultLimit(&cfg.MaxSockets, DefaultMaxSockets)
	defaultLimit(&cfg.MaxPendingUpgrades, transport.DefaultMaxPendingUpgrades)
	defaultLimit(&cfg.MaxPayloadSize, DefaultMaxPayloadSize)
	defaultLimit(&cfg.MaxTopicLength, DefaultMaxTopicLength)
	defaultLimit(&cfg.MaxEventLength, DefaultMaxEventLength)
	defaultLimit(&cfg.MaxRefLength, channels.DefaultMaxRefLength)
	defaultLimit(&cfg.LongPollMaxSessions, transport.DefaultLongPollMaxSessions)
	defaultLimit(&cfg.LongPollMaxBuffered, transport.DefaultLongPollMaxBuffered)
	defaultLimit(&cfg.LongPollMaxBufferedBytes, transport.DefaultLongPollMaxBufferedBytes)
	defaultLimit(&cfg.LongPollMaxAnswerBytes, transport.DefaultLongPollMaxAnswerBytes)
	defaultLimit(&cfg.LongPollMaxSessionsPerAddr, transport.DefaultLongPollMaxSessionsPerAddr)
	for _, v := range []*int{&cfg.LongPollMaxSessions, &cfg.LongPollMaxBuffered, &cfg.LongPollMaxBufferedBytes, &cfg.LongPollMaxSessionsPerAddr} {
		if *v < 0 {
			*v = math.MaxInt // the transport reads zero or negative as its default
		}
	}
	if cfg.HTTPIdleTimeout == 0 {
		cfg.HTTPIdleTimeout = DefaultHTTPIdleTimeout
	}
	if cfg.HTTPRequestTimeout == 0 {
		cfg.HTTPRequestTimeout = DefaultHTTPRequestTimeout
	}
	defaultLimit(&cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)
	if cfg.MaxConnections == 0 && cfg.MaxSockets > 0 {
		cfg.MaxConnections = cfg.MaxSockets + DefaultMaxConnectionsMargin
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = transport.DefaultHandshakeTimeout
	}
	if cfg.DrainWindow < 0 || cfg.ShutdownTimeout < 0 {
		return cfg, errors.New("node: DrainWindow and ShutdownTimeout must not be negative")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Router == nil {
		return cfg, errors.New("node: a Router is required")
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = 2 * time.Second
	}
	if cfg.Rebalance.Threshold < 0 || cfg.Rebalance.Share < 0 || cfg.Rebalance.Share > 1 {
		return cfg, errors.New("node: Rebalance.Threshold must be >= 0 and Share within [0, 1]")
	}
	if cfg.Rebalance.Share == 0 {
		cfg.Rebalance.Share = 0.05
	}
	if cfg.Presence != nil && cfg.PresenceLimits != (presence.Limits{}) {
		return cfg, errors.New("node: PresenceLimits applies to the tracker the node builds; set the limits on the Presence passed in")
	}
	if cfg.Redis != "" {
		if err := cfg.checkRedis(); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// build makes the node from a cfg past withDefaults.
func build(cfg Config) (*Node, error) {
	if cfg.PubSub == nil {
		cfg.PubSub = local.New()
	}
	if cfg.Presence == nil {
		cfg.Presence = presence.NewLocalWith(cfg.PubSub, presence.LocalOptions{Limits: cfg.PresenceLimits, MaxCoalesce: cfg.PresenceMaxCoalesce})
	}
	if err := setHistoryPolicy(cfg); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), started: time.Now(), sessions: newSessionKeys(cfg.APIKey)}
	// The dashboard's channel joins the application's routes on a copy.
	router := cfg.Router.With(dashboardTopic, func(string) channels.Channel { return &dashboardChannel{n: n} })
	ep, err := channels.NewEndpoint(channels.EndpointConfig{
		Router:      router,
		Handler:     cfg.SocketHandler,
		PubSub:      cfg.PubSub,
		Presence:    cfg.Presence,
		Logger:      cfg.Logger,
		MaxChannels: cfg.MaxChannels,

		MaxPayloadSize:       cfg.MaxPayloadSize,
		MaxTopicLength:       cfg.MaxTopicLength,
		MaxEventLength:       cfg.MaxEventLength,
		MaxRefLength:         cfg.MaxRefLength,
		MaxMessagesPerSecond: cfg.MaxMessagesPerSecond,
		Burst:                cfg.Burst,
		RateAbuseAfter:       cfg.RateAbuseAfter,
		JoinTimeout:          cfg.JoinTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n.endpoint = ep
	n.slots = transport.NewSlots(cfg.MaxSockets)
	n.ws, err = transport.NewWebSocketHandler(transport.FromEndpoint(ep), transport.WebSocketConfig{
		IdleTimeout:        cfg.IdleTimeout,
		MaxFrameSize:       cfg.MaxFrameSize,
		MessageTimeout:     cfg.MessageTimeout,
		MaxMessageBuffers:  cfg.MaxMessageBuffers,
		MaxURLLength:       cfg.MaxURLLength,
		AllowedOrigins:     cfg.AllowedOrigins,
		AuthToken:          true,
		Logger:             cfg.Logger,
		HandshakeTimeout:   cfg.HandshakeTimeout,
		Sockets:            n.slots,
		MaxPendingUpgrades: cfg.MaxPendingUpgrades,
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	// A clustered PubSub carries long-poll requests to the node that
	// holds their session; each node signs its tokens with a key of its
	// own, since only the issuing node verifies them.
	relay, _ := cfg.PubSub.(pubsub.Caller)
	if relay != nil {
		if cfg.NodeID == "" {
			cfg.NodeID = relay.NodeID()
		}
		if cfg.NodeID != relay.NodeID() {
			return nil, fmt.Errorf("node: NodeID %q differs from the PubSub's node id %q: long-poll tokens would name a node no relay reaches", cfg.NodeID, relay.NodeID())
		}
	}
	if cfg.NodeID == "" {
		cfg.NodeID, _ = os.Hostname()
		cfg.NodeID = cmp.Or(cfg.NodeID, "node")
	}
	n.cfg = cfg
	n.cluster = newClusterView(cfg.NodeID, cfg.ReportInterval)
	n.lp, err = transport.NewLongPollHandler(transport.FromEndpoint(ep), transport.LongPollConfig{
		MaxBody:          cfg.MaxFrameSize,
		MaxSessions:      cfg.LongPollMaxSessions,
		MaxBuffered:      cfg.LongPollMaxBuffered,
		HandshakeTimeout: cfg.HandshakeTimeout,
		Sockets:          n.slots,
		AllowedOrigins:   cfg.AllowedOrigins,
		NodeID:           cfg.NodeID,
		Relay:            relay,
		Logger:           cfg.Logger,

		MaxBufferedBytes:   cfg.LongPollMaxBufferedBytes,
		MaxAnswerBytes:     cfg.LongPollMaxAnswerBytes,
		IOTimeout:          cfg.LongPollIOTimeout,
		MaxBodyBuffers:     cfg.LongPollMaxBodyBuffers,
		MaxSessionsPerAddr: cfg.LongPollMaxSessionsPerAddr,
		TrustedProxies:     cfg.TrustedProxies,
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n.messagesOut = func() uint64 { return n.ws.Stats().MessagesOut.Load() + n.lp.Stats().MessagesOut.Load() }
	n.metrics = n.newMetricsRegistry()
	n.routes()
	n.conns.max = max(cfg.MaxConnections, 0)
	n.conns.idleTimeout = max(cfg.HTTPIdleTimeout, 0)
	n.server = &http.Server{
		Handler:           n.requestRead(n.requestDeadlines(n.mux)),
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		// Negative: no bound, which net/http spells 0 (and a zero
		// IdleTimeout would fall back to ReadTimeout, also 0).
		IdleTimeout:    max(cfg.HTTPIdleTimeout, 0),
		MaxHeaderBytes: max(cfg.MaxHeaderBytes, 0),
		ConnState:      n.connState,
		ConnContext:    n.connContext,
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return n, nil
}

func (n *Node) routes() {
	n.mux.Handle(n.cfg.SocketPath+"/websocket", n.ws)
	n.mux.Handle(n.cfg.SocketPath+"/longpoll", n.lp)
	n.mux.HandleFunc("GET /healthz", n.healthz)
	n.mux.HandleFunc("GET /readyz", n.readyz)
	n.mux.HandleFunc("POST /api/broadcast", n.requireKey(requireJSON(n.apiBroadcast)))
	n.mux.HandleFunc("GET /api/history", n.requireKey(n.apiHistory))
	n.mux.HandleFunc("POST /api/disconnect", n.requireKey(requireJSON(n.apiDisconnect)))
	n.mux.HandleFunc("POST /api/drain", n.requireKey(requireJSON(n.apiDrain)))
	n.mux.HandleFunc("GET /api/drain", n.requireKey(n.apiDrain))
	if n.cfg.MetricsPublic {
		n.mux.HandleFunc("GET /metrics", n.metricsHandler())
	} else {
		n.mux.HandleFunc("GET /metrics", n.requireKey(n.metricsHandler()))
	}
	n.dashboardRoutes()
	if n.cfg.Home != nil {
		n.mux.Handle("/", n.cfg.Home)
	}
}

// Endpoint returns the node's channel endpoint, for applications that
// broadcast or disconnect from Go.
func (n *Node) Endpoint() *channels.Endpoint { return n.endpoint }

// Presence returns the node's presence tracker: Config.Presence, or the
// one the node built (in memory, or Redis with Config.Redis). Its List is
// Phoenix's Presence.list/1: the topic's presences grouped by key, on
// every node of the cluster. It is for reading: channels track through
// ChannelSocket.Track, whose entries leave with their join, while an
// entry tracked here directly stays until untracked here.
func (n *Node) Presence() presence.Tracker { return n.cfg.Presence }

// Handler returns the node's HTTP handler, for embedding in another server.
func (n *Node) Handler() http.Handler { return n.mux }

// WebSocketStats returns the WebSocket transport's counters.
func (n *Node) WebSocketStats() *transport.Stats { return n.ws.Stats() }

// LongPollStats returns the long-poll transport's counters.
func (n *Node) LongPollStats() *transport.LongPollStats { return n.lp.Stats() }

// Start listens on the configured address and serves in the background.
func (n *Node) Start() error {
	ln, err := net.Listen("tcp", n.cfg.Addr)
	if err != nil {
		return fmt.Errorf("node: listen: %w", err)
	}
	n.mu.Lock()
	n.listener = ln
	n.mu.Unlock()
	go func() {
		if err := n.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("node: serve failed", "err", err)
		}
	}()
	n.log.Info("node: listening", "addr", ln.Addr().String(), "socket_path", n.cfg.SocketPath)
	n.logAccess()
	n.startCluster()
	return nil
}

// startCluster joins the cluster view and starts reporting to it.
func (n *Node) startCluster() {
	if err := n.cfg.PubSub.Subscribe(clusterTopic, n.cluster); err != nil {
		n.log.Warn("node: cannot follow the cluster view", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.mu.Lock()
	n.stopCluster, n.clusterDone = cancel, make(chan struct{})
	done := n.clusterDone
	n.mu.Unlock()
	go func() {
		defer close(done)
		n.clusterLoop(ctx)
	}()
}

// endCluster stops reporting (before the PubSub closes).
func (n *Node) endCluster() {
	n.mu.Lock()
	stop, done := n.stopCluster, n.clusterDone
	n.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-done
	n.cfg.PubSub.Unsubscribe(clusterTopic, n.cluster)
}

// Addr returns the listening address once Start has succeeded.
func (n *Node) Addr() net.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listener == nil {
		return nil
	}
	return n.listener.Addr()
}

// Shutdown stops the node gracefully. It drains the node (see Drain), unless
// a drain has begun already: readiness turns false, new sockets are
// refused, open sockets are closed with 1012 (service restart) in batches
// over DrainWindow so clients reconnect elsewhere, and their channels
// terminate (presences leave). It then waits for the last sockets within
// ShutdownTimeout, and closes the presence tracker (which removes this
// node's remaining entries) and the PubSub. If ctx ends during the window
// the remaining sockets are closed at once; if it ends before
// ShutdownTimeout, that is the deadline. Sockets still open then are
// abandoned when the process exits.
func (n *Node) Shutdown(ctx context.Context) error {
	var err error
	n.shutdown.Do(func() { err = n.doShutdown(ctx) })
	return err
}

func (n *Node) doShutdown(ctx context.Context) error {
	start := time.Now()
	open := n.endpoint.SocketCount()
	n.log.Info("node: shutting down", "sockets", open)
	// The drain refuses new sockets before it lists those to close; the
	// HTTP server serves on meanwhile (open long-poll sessions, probes,
	// the drain's progress).
	n.awaitDrain(ctx, n.startDrain())

	ctx, cancel := context.WithTimeout(ctx, n.cfg.ShutdownTimeout)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- n.server.Shutdown(ctx) }()

	var errs []error
	select {
	case <-n.endpoint.Runtime().Drained():
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("node: %d sockets still open at the shutdown deadline", n.endpoint.SocketCount()))
	}
	if err := <-httpDone; err != nil && !errors.Is(err, context.DeadlineExceeded) {
		errs = append(errs, fmt.Errorf("node: http shutdown: %w", err))
	}
	if err := n.ws.Close(); err != nil {
		errs = append(errs, fmt.Errorf("node: websocket: %w", err))
	}
	if err := n.lp.Close(); err != nil {
		errs = append(errs, fmt.Errorf("node: longpoll: %w", err))
	}
	n.endCluster()
	if err := n.cfg.Presence.Close(); err != nil {
		errs = append(errs, fmt.Errorf("node: presence: %w", err))
	}
	if err := n.cfg.PubSub.Close(); err != nil {
		errs = append(errs, fmt.Errorf("node: pubsub: %w", err))
	}
	n.log.Info("node: stopped", "sockets_closed", open, "took", time.Since(start).Round(time.Millisecond))
	return errors.Join(errs...)
}
