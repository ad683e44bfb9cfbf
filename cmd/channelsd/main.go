package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/cmd/channelsd/app"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	pubsubredis "github.com/channelsd/channelsd/pubsub/redis"
	"github.com/channelsd/channelsd/transport"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "token" {
		if err := tokenCommand(os.Args[2:], os.Stdout, os.Stderr); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				os.Exit(0)
			}
			fmt.Fprintln(os.Stderr, "channelsd token:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "drain" {
		if err := drainCommand(context.Background(), os.Args[2:], os.Stderr); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				os.Exit(0)
			}
			fmt.Fprintln(os.Stderr, "channelsd drain:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && (os.Args[1] == "--check-config" || os.Args[1] == "-check-config" || strings.HasPrefix(os.Args[1], "--check-config=")) {
		if err := checkConfigCommand(os.Args[1:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "channelsd:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 2 && (os.Args[1] == "--print-default-config" || os.Args[1] == "-print-default-config") {
		if err := printDefaultConfigCommand(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "channelsd:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "channelsd:", err)
		os.Exit(2)
	}
}

// options are the command-line settings; every flag has a CHANNELS_*
// environment variable that sets its default.
type options struct {
	addr            string
	socketPath      string
	allowedOrigins  string
	idleTimeout     time.Duration
	maxFrameSize    int64
	maxChannels     int
	apiKey          string
	metricsPublic   bool
	tokenSecret     string
	tokenPrevious   string
	logLevel        string
	conformance     bool
	drainWindow     time.Duration
	shutdownTimeout time.Duration
	pprofAddr       string
	returnMemory    time.Duration
	reportInterval  time.Duration
	rebalance       float64
	rebalanceShare  float64
	redis           string
	redisPrefix     string
	nodeID          string
	heartbeat       time.Duration
	deadAfter       time.Duration
	coalesce        time.Duration
	coalesceMax     time.Duration
	history         string
	historyRules    []pubsub.HistoryRule // parsed from history
	config          string
	proxySecret     string

	// secretsOnCommandLine names the secret flags given as arguments,
	// which every local user can read (ps).
	secretsOnCommandLine []string

	// Limits (README "Limits").
	maxSockets         int
	maxPendingUpgrades int
	handshakeTimeout   time.Duration
	maxPayloadSize     int
	maxTopicLength     int
	maxEventLength     int
	maxRefLength       int
	maxMessagesPerSec  float64
	burst              int
	lpMaxSessions      int
	lpMaxBuffered      int
	presenceKeyLength  int
	presenceMetaSize   int
	presencePerTopic   int
	presencePerJoin    int
	redisMaxMessage    int
	lpMaxBufferedBytes int
	lpMaxAnswerBytes   int
	lpMaxBodyBuffers   int64
	lpIOTimeout        time.Duration
	lpMaxPerAddr       int
	trustedProxies     string
	httpIdleTimeout    time.Duration
	httpRequestTimeout time.Duration
	maxHeaderBytes     int
	maxConnections     int
	messageTimeout     time.Duration
	maxMessageBuffers  int64
	maxURLLength       int
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("channelsd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	env := envDefaults{fs: fs}
	env.str(&o.addr, "addr", "CHANNELS_ADDR", ":4000", "listen address")
	env.str(&o.socketPath, "socket-path", "CHANNELS_SOCKET_PATH", "/socket", "base path of the socket transports (WebSocket at <path>/websocket)")
	env.str(&o.allowedOrigins, "allowed-origins", "CHANNELS_ALLOWED_ORIGINS", "", "comma-separated origins allowed to open sockets, as scheme://host[:port]; empty allows any origin")
	env.duration(&o.idleTimeout, "idle-timeout", "CHANNELS_IDLE_TIMEOUT", 60*time.Second, "close a socket that sent nothing for this long (clients heartbeat every 30s)")
	env.int64(&o.maxFrameSize, "max-frame-size", "CHANNELS_MAX_FRAME_SIZE", 1<<20, "largest client message in bytes; larger ones close the socket with 1009")
	env.duration(&o.messageTimeout, "message-timeout", "CHANNELS_MESSAGE_TIMEOUT", transport.DefaultMessageTimeout, "longest time a WebSocket message that does not arrive whole at once (fragmented, or above 4 KiB) may take from its first frame to its last, pings between them included; a socket still short of its end is closed with 1008")
	env.int64(&o.maxMessageBuffers, "max-message-buffers", "CHANNELS_MAX_MESSAGE_BUFFERS", transport.DefaultMaxMessageBuffers, "bytes all WebSocket sockets may hold at once in buffers of messages in progress (within --max-frame-size each); a message that needs more takes it from the oldest messages in progress, whose sockets are closed with 1013; -1: no limit")
	env.int(&o.maxURLLength, "max-url-length", "CHANNELS_MAX_URL_LENGTH", transport.DefaultMaxURLLength, "longest request target (path and query) of a WebSocket upgrade in bytes; a longer one is answered HTTP 414 before the connect callback; -1: no limit")
	env.int(&o.maxChannels, "max-channels", "CHANNELS_MAX_CHANNELS", 100, "channels one socket may join")
	env.int(&o.maxSockets, "max-sockets", "CHANNELS_MAX_SOCKETS", node.DefaultMaxSockets, "sockets (WebSocket connections plus long-poll sessions) this node serves; one more is answered HTTP 503 with Retry-After; keep it under the open-file limit; -1: no limit")
	env.int(&o.maxPendingUpgrades, "max-pending-upgrades", "CHANNELS_MAX_PENDING_UPGRADES", transport.DefaultMaxPendingUpgrades, "WebSocket handshakes in progress at once; one more is answered HTTP 503 with Retry-After; -1: no limit")
	env.duration(&o.handshakeTimeout, "handshake-timeout", "CHANNELS_HANDSHAKE_TIMEOUT", transport.DefaultHandshakeTimeout, "longest time to read a request's headers (a client trickling them is disconnected) and, separately, to run the connect callback")
	env.int(&o.maxPayloadSize, "max-payload-size", "CHANNELS_MAX_PAYLOAD_SIZE", node.DefaultMaxPayloadSize, "largest payload of a client message in bytes (within --max-frame-size); a larger one is dropped with the error reply {\"reason\":\"payload too large\"}; -1: no limit")
	env.int(&o.maxTopicLength, "max-topic-length", "CHANNELS_MAX_TOPIC_LENGTH", node.DefaultMaxTopicLength, "longest topic of a client message in bytes; a longer one gets the error reply {\"reason\":\"topic too long\"}; -1: no limit")
	env.int(&o.maxEventLength, "max-event-length", "CHANNELS_MAX_EVENT_LENGTH", node.DefaultMaxEventLength, "longest event name of a client message in bytes; a longer one gets the error reply {\"reason\":\"event too long\"}; -1: no limit")
	env.int(&o.maxRefLength, "max-ref-length", "CHANNELS_MAX_REF_LENGTH", channels.DefaultMaxRefLength, "longest join_ref or ref of a client message in bytes of JSON text (phoenix.js sends small integer strings); a longer one gets the error reply {\"reason\":\"ref too long\"}; -1: no limit")
	env.float(&o.maxMessagesPerSec, "max-messages-per-second", "CHANNELS_MAX_MESSAGES_PER_SECOND", 100, "messages per second each socket may send on average (token bucket of --burst); one over gets the error reply {\"reason\":\"rate limited\"}, and a socket still over its rate 10s after its first refusal is closed with 1008; 0: no limit")
	env.int(&o.burst, "burst", "CHANNELS_BURST", 200, "messages a socket may send at once before --max-messages-per-second applies; 0: twice the rate")
	env.int(&o.lpMaxSessions, "longpoll-max-sessions", "CHANNELS_LONGPOLL_MAX_SESSIONS", transport.DefaultLongPollMaxSessions, "long-poll sessions this node serves (they count toward --max-sockets too); one more is answered HTTP 503 with Retry-After; -1: no limit")
	env.int(&o.lpMaxBuffered, "longpoll-max-buffered", "CHANNELS_LONGPOLL_MAX_BUFFERED", transport.DefaultLongPollMaxBuffered, "messages a long-poll session buffers for its next poll; one more ends the session as a slow consumer (its next request gets {\"status\":410}: the client reconnects and rejoins)")
	env.int(&o.lpMaxBufferedBytes, "longpoll-max-buffered-bytes", "CHANNELS_LONGPOLL_MAX_BUFFERED_BYTES", transport.DefaultLongPollMaxBufferedBytes, "bytes a long-poll session buffers for its next poll (as JSON in an answer); a message beyond ends the session as a slow consumer, as --longpoll-max-buffered; -1: no limit")
	env.int(&o.lpMaxAnswerBytes, "longpoll-max-answer-bytes", "CHANNELS_LONGPOLL_MAX_ANSWER_BYTES", transport.DefaultLongPollMaxAnswerBytes, "largest long-poll answer in bytes (the default is also the most, so that relayed answers fit in one Redis message); the rest waits for the next poll, and a larger message goes alone")
	env.int(&o.lpMaxPerAddr, "longpoll-max-sessions-per-address", "CHANNELS_LONGPOLL_MAX_SESSIONS_PER_ADDRESS", transport.DefaultLongPollMaxSessionsPerAddr, "live long-poll sessions one client address may hold (IPv6: one /64); one more is answered HTTP 503 with Retry-After; behind a proxy see --trusted-proxies; -1: no limit")
	env.str(&o.trustedProxies, "trusted-proxies", "CHANNELS_TRUSTED_PROXIES", "", "comma-separated CIDRs (or addresses) of the proxies or load balancers in front of the node: a request from one of them is taken to come from the right-most X-Forwarded-For address that is not one of them (for per-address limits); empty: X-Forwarded-For is never trusted")
	env.int64(&o.lpMaxBodyBuffers, "longpoll-max-body-buffers", "CHANNELS_LONGPOLL_MAX_BODY_BUFFERS", transport.DefaultLongPollMaxBodyBuffers, "bytes of long-poll POST bodies the node holds at once (within --max-frame-size each), from before they are read until answered; a POST that does not fit gets HTTP 503 {\"status\":503} unread; -1: no limit")
	env.duration(&o.lpIOTimeout, "longpoll-io-timeout", "CHANNELS_LONGPOLL_IO_TIMEOUT", transport.DefaultLongPollIOTimeout, "longest time to read a long-poll POST body (slower: HTTP 400, nothing processed) or write an answer (slower: cut off, and a session whose messages were in it ends)")
	env.int(&o.presenceKeyLength, "presence-max-key-length", "CHANNELS_PRESENCE_MAX_KEY_LENGTH", presence.DefaultMaxKeyLength, "longest presence key in bytes (the room's user name): a longer connect parameter user is refused with 403, a longer join user with {\"reason\":\"user name too long\"}, and Track with an error; -1: no limit")
	env.int(&o.presenceMetaSize, "presence-max-meta-size", "CHANNELS_PRESENCE_MAX_META_SIZE", presence.DefaultMaxMetaSize, "largest presence meta in bytes; a larger one is refused with an error (the conformance channel replies {\"reason\":\"presence meta too large\"}); -1: no limit")
	env.int(&o.presencePerTopic, "presence-max-per-topic", "CHANNELS_PRESENCE_MAX_PER_TOPIC", presence.DefaultMaxPerTopic, "presence entries this node tracks on one topic (every join is sent the whole room); beyond, a join stands without presence; -1: no limit")
	env.int(&o.presencePerJoin, "presence-max-per-join", "CHANNELS_PRESENCE_MAX_PER_JOIN", presence.DefaultMaxPerOwner, "presence keys one join may track at once (the default application tracks one; the conformance channel replies {\"reason\":\"too many presence keys\"} beyond); -1: no limit")
	env.int(&o.redisMaxMessage, "redis-max-message-size", "CHANNELS_REDIS_MAX_MESSAGE_SIZE", pubsubredis.DefaultMaxMessageSize, "with --redis: largest message in bytes one Redis PUBLISH carries (Redis cuts off a node whose pending pub/sub output passes 32 MB); a larger broadcast is refused (error reply {\"reason\":\"payload too large\"}), a larger presence diff is split; must exceed --max-frame-size by 64 KiB so a relayed long-poll POST fits")
	env.duration(&o.httpIdleTimeout, "http-idle-timeout", "CHANNELS_HTTP_IDLE_TIMEOUT", node.DefaultHTTPIdleTimeout, "close a keep-alive HTTP connection idle this long between two requests (sockets have --idle-timeout); negative: never")
	env.duration(&o.httpRequestTimeout, "http-request-timeout", "CHANNELS_HTTP_REQUEST_TIMEOUT", node.DefaultHTTPRequestTimeout, "longest time to receive a request's body, and to write an answer other than a socket transport's; the connection is closed past it; negative: no bound")
	env.int(&o.maxHeaderBytes, "max-header-bytes", "CHANNELS_MAX_HEADER_BYTES", node.DefaultMaxHeaderBytes, "largest request line plus headers in bytes (a socket's connect parameters travel in the request line); beyond, HTTP 431; -1: Go's default of 1 MiB")
	env.int(&o.maxConnections, "max-connections", "CHANNELS_MAX_CONNECTIONS", 0, fmt.Sprintf("TCP connections open at once, WebSocket ones included; one more first closes a keep-alive connection idle between requests, else is closed unanswered; keep it under the open-file limit; 0: --max-sockets plus %d; -1: no limit", node.DefaultMaxConnectionsMargin))
	env.str(&o.apiKey, "api-key", "CHANNELS_API_KEY", "", "key of the operators' endpoints (/api/*, /metrics, /dashboard): callers present it as Authorization: Bearer <key>, the dashboard through its login form; empty serves them to loopback clients only. A secret: set it in the environment, not as a flag")
	env.bool(&o.metricsPublic, "metrics-public", "CHANNELS_METRICS_PUBLIC", false, "serve /metrics to any client without the API key (for a Prometheus scraping from other hosts without it); the rest of the API stays guarded")
	env.str(&o.tokenSecret, "token-secret", "CHANNELS_TOKEN_SECRET", "", "secret (at least 32 bytes) that signs and verifies socket tokens (HS256 JWTs); when set every socket needs a valid token, and private:* topics open to tokens whose topics claim names them; empty accepts anonymous sockets. A secret: set it in the environment, not as a flag")
	env.str(&o.tokenPrevious, "token-secret-previous", "CHANNELS_TOKEN_SECRET_PREVIOUS", "", "during a secret rotation: the previous secret, which still verifies tokens but signs none. A secret: set it in the environment, not as a flag")
	env.str(&o.logLevel, "log-level", "CHANNELS_LOG_LEVEL", "info", "debug, info, warn or error")
	env.bool(&o.conformance, "conformance", "CHANNELS_CONFORMANCE", false, "serve the conformance channel (conformance:*), a tool for testing client libraries, besides the configuration's channels")
	env.duration(&o.drainWindow, "drain-window", "CHANNELS_DRAIN_WINDOW", defaultDrainWindow, "when the node drains (SIGTERM, channelsd drain, POST /api/drain), close its sockets in batches spread evenly over this window, so clients reconnect to other nodes gradually; 0 closes them all at once")
	env.duration(&o.shutdownTimeout, "shutdown-timeout", "CHANNELS_SHUTDOWN_TIMEOUT", 10*time.Second, "longest graceful shutdown after the drain window (last sockets, presence cleanup); SIGTERM to exit takes at most the drain window plus this")
	env.str(&o.redis, "redis", "CHANNELS_REDIS", "", "Redis for clustering: redis://[user:password@]host:6379[/db], rediss://... (TLS), redis-sentinel://[:password@]host1:26379,host2:26379/master[/db], or a Redis Cluster: redis-cluster://[user:password@]host1:6379,host2:6379,... (rediss-cluster:// over TLS); empty runs a single node in memory")
	env.str(&o.redisPrefix, "redis-prefix", "CHANNELS_REDIS_PREFIX", "channelsd", "prefix of every Redis key and channel, so several deployments can share one Redis")
	env.duration(&o.heartbeat, "presence-heartbeat", "CHANNELS_PRESENCE_HEARTBEAT", 5*time.Second, "with --redis: how often a node heartbeats and re-checks its presence entries")
	env.duration(&o.deadAfter, "presence-dead-after", "CHANNELS_PRESENCE_DEAD_AFTER", 0, "with --redis: a node silent this long is dead and its users leave; 0 means 3 heartbeats")
	env.duration(&o.coalesce, "presence-coalesce", "CHANNELS_PRESENCE_COALESCE", 30*time.Millisecond, "with --redis: presence changes of a topic within this window go out as one presence_diff")
	env.duration(&o.coalesceMax, "presence-coalesce-max", "CHANNELS_PRESENCE_COALESCE_MAX", 0, "the widest window between two presence_diffs of a busy topic (0: 2s); a topic whose diffs reach more than four members per change they carry doubles its window up to this (a join storm into big rooms then costs far fewer diffs), one whose diffs carry more halves it back")
	env.str(&o.history, "history", "CHANNELS_HISTORY", "", "topics that keep a history of their broadcasts, which clients that rejoin with since recover: rules \"pattern=size[,ttl]\" separated by ';', the pattern exact or ending in '*', e.g. \"room:*=100,5m;lobby=20\" (ttl: how long an idle topic keeps it, default 5m); the application's own routes (room:* keeps 100 for 5m) come first; empty: none beyond those")
	env.str(&o.config, "config", "CHANNELS_CONFIG", "", "configuration file (YAML) declaring the channels by topic pattern and the application backend that decides connects, joins and pushes (README \"Channels for any backend\"); empty serves the default configuration (--print-default-config)")
	env.str(&o.proxySecret, "proxy-secret", "CHANNELS_PROXY_SECRET", "", "with --config: secret that signs every backend call (header X-Channelsd-Signature: sha256=<hex HMAC-SHA256 of the body>); empty sends them unsigned. A secret: set it in the environment, not as a flag")
	env.str(&o.nodeID, "node-id", "CHANNELS_NODE_ID", "", "this node's id in the cluster; default POD_NAME, else hostname plus a short uuid")
	env.duration(&o.returnMemory, "return-memory-after", "CHANNELS_RETURN_MEMORY_AFTER", 10*time.Second, "after a burst (a join storm, a reconnect wave), collect the garbage it left and hand the freed heap back to the OS once the node has allocated little for this long, rather than at the runtime's pace; 0 leaves it to the runtime")
	env.str(&o.pprofAddr, "pprof-addr", "CHANNELS_PPROF_ADDR", "", "serve net/http/pprof on this loopback address (127.0.0.1:6060, [::1]:6060, localhost:6060; any other is refused: profiles show the process's memory); empty disables it")
	env.duration(&o.reportInterval, "report-interval", "CHANNELS_REPORT_INTERVAL", 2*time.Second, "how often the node reports its sockets and message counts to the cluster (for rebalancing and /dashboard)")
	env.float(&o.rebalance, "rebalance-threshold", "CHANNELS_REBALANCE_THRESHOLD", 0, "rebalancing: a node holding more than (1+this) times the cluster's mean of sockets asks some of its oldest sockets to reconnect elsewhere (close 1012) until within it, e.g. 0.2; 0 turns it off")
	env.float(&o.rebalanceShare, "rebalance-share", "CHANNELS_REBALANCE_SHARE", 0.05, "rebalancing: the most sockets asked to move per report interval, as a fraction of the node's sockets")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: channelsd [flags]\n       channelsd --check-config FILE\n       channelsd drain [--addr A] [--api-key K] [--drain-window W]\n"+
			"       channelsd token --sub S [--topics P1,P2] [--ttl D] [--token-secret K]\n\n"+
			"Runs one channelsd node. Every flag can also be set with the environment variable shown.\n"+
			"Secrets (CHANNELS_API_KEY, CHANNELS_TOKEN_SECRET, CHANNELS_TOKEN_SECRET_PREVIOUS, a password\n"+
			"in CHANNELS_REDIS) belong in the environment: flags show in ps and /proc/<pid>/cmdline.\n"+
			"GOGC defaults to 50 (Go's own default is 100): less memory per idle socket for more\n"+
			"collector CPU while connections pour in; set GOGC to choose.\n\n"+
			"`channelsd drain` asks the node on --addr (this host) to drain, through POST /api/drain,\n"+
			"and waits until its sockets are closed or the drain window plus %s has passed: the\n"+
			"Kubernetes preStop hook. SIGTERM drains too, then exits.\n\n"+
			"`channelsd --check-config FILE` checks a configuration file (--config) and exits: 0 and\n"+
			"\"ok\" when it is valid, else 1 and what is wrong, with its line.\n\n"+
			"`channelsd --print-default-config` prints the configuration served without --config (the\n"+
			"demo page and its rooms), to start a file of your own from.\n\n"+
			"`channelsd token` prints a socket token signed with CHANNELS_TOKEN_SECRET (or\n"+
			"--token-secret), for testing: sub S, valid for --ttl (1h), allowed to join the topic\n"+
			"patterns of --topics (exact, or ending in '*'; none: no topics claim).\n\n", drainMargin)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := env.err(); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) {
		if v := f.Value.String(); secretFlags[f.Name] && v != "" && (f.Name != "redis" || strings.Contains(v, "@")) {
			o.secretsOnCommandLine = append(o.secretsOnCommandLine, "--"+f.Name)
		}
	})
	rules, err := pubsub.ParseHistoryRules(o.history)
	if err != nil {
		return nil, fmt.Errorf("--history: %w", err)
	}
	o.historyRules = rules
	if o.pprofAddr != "" {
		if err := loopbackAddr(o.pprofAddr); err != nil {
			return nil, fmt.Errorf("--pprof-addr %q: %w", o.pprofAddr, err)
		}
	}
	// The shutdown timeout counts after the drain window (node.Config), so
	// any pair of values is consistent; only negative ones are not.
	if o.drainWindow < 0 {
		return nil, fmt.Errorf("--drain-window %s: must not be negative", o.drainWindow)
	}
	if o.handshakeTimeout <= 0 {
		return nil, fmt.Errorf("--handshake-timeout %s: must be positive", o.handshakeTimeout)
	}
	if o.maxMessagesPerSec < 0 || o.burst < 0 {
		return nil, fmt.Errorf("--max-messages-per-second and --burst must not be negative")
	}
	if o.lpMaxBuffered <= 0 {
		return nil, fmt.Errorf("--longpoll-max-buffered %d: must be positive", o.lpMaxBuffered)
	}
	if o.lpMaxAnswerBytes <= 0 || o.lpMaxAnswerBytes > transport.DefaultLongPollMaxAnswerBytes {
		return nil, fmt.Errorf("--longpoll-max-answer-bytes %d: must be positive and at most %d", o.lpMaxAnswerBytes, transport.DefaultLongPollMaxAnswerBytes)
	}
	if o.lpIOTimeout <= 0 {
		return nil, fmt.Errorf("--longpoll-io-timeout %s: must be positive", o.lpIOTimeout)
	}
	if o.httpIdleTimeout == 0 || o.httpRequestTimeout == 0 {
		return nil, errors.New("--http-idle-timeout and --http-request-timeout must not be 0 (negative: no bound)")
	}
	if o.messageTimeout <= 0 {
		return nil, fmt.Errorf("--message-timeout %s: must be positive", o.messageTimeout)
	}
	if o.shutdownTimeout <= 0 {
		return nil, fmt.Errorf("--shutdown-timeout %s: must be positive", o.shutdownTimeout)
	}
	if o.presenceKeyLength == 0 || o.presenceMetaSize == 0 || o.presencePerTopic == 0 || o.presencePerJoin == 0 {
		return nil, errors.New("--presence-max-key-length, --presence-max-meta-size, --presence-max-per-topic and --presence-max-per-join must not be 0 (-1: no limit)")
	}
	if o.redis != "" {
		if _, err := pubsubredis.ParseAddress(o.redis); err != nil {
			return nil, fmt.Errorf("--redis: %w", err)
		}
	}
	// A long-poll request relayed to its session's node travels as one
	// Redis message: its body (at most --max-frame-size) and headers must
	// fit.
	if o.redis != "" && (o.redisMaxMessage < pubsubredis.MinMaxMessageSize || int64(o.redisMaxMessage) < o.maxFrameSize+node.RedisRelayHeadroom) {
		return nil, fmt.Errorf("--redis-max-message-size %d: must be at least %d and exceed --max-frame-size (%d) by %d", o.redisMaxMessage, pubsubredis.MinMaxMessageSize, o.maxFrameSize, node.RedisRelayHeadroom)
	}
	return o, nil
}

func run(args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg := app.Default()
	if o.config != "" {
		if cfg, err = app.LoadConfig(o.config); err != nil {
			return err
		}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)
	setDefaultGCPercent()
	if len(o.secretsOnCommandLine) > 0 {
		logger.Warn("channelsd: secrets given as flags show in ps and /proc/<pid>/cmdline to every local user; set them in the environment (CHANNELS_*) instead",
			"flags", strings.Join(o.secretsOnCommandLine, " "))
	}

	var tokens *auth.Verifier
	switch {
	case o.tokenSecret != "":
		if tokens, err = auth.NewVerifier(o.tokenSecret, o.tokenPrevious); err != nil {
			return fmt.Errorf("--token-secret: %w", err)
		}
		logger.Info("channelsd: sockets need signed tokens", "rotating", o.tokenPrevious != "")
	case o.tokenPrevious != "":
		return errors.New("--token-secret-previous needs --token-secret")
	default:
		logger.Warn("channelsd: no --token-secret: sockets connect without authentication, and private:* topics are closed")
	}

	nodeID := o.nodeID
	if nodeID == "" {
		nodeID = os.Getenv("POD_NAME")
	}
	if nodeID == "" {
		nodeID = pubsubredis.DefaultNodeID()
	}
	logger = logger.With("node", nodeID)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	var ep *channels.Endpoint
	built, err := cfg.Build(app.Options{Conformance: o.conformance, Endpoint: func() *channels.Endpoint { return ep }, Tokens: tokens,
		MaxUserLength: o.presenceKeyLength, ProxySecret: o.proxySecret, SocketPath: o.socketPath})
	if err != nil {
		return err
	}
	var collectors []prometheus.Collector
	if built.Client != nil {
		// After the node has stopped: no channel calls the backend then,
		// and the leaves in flight are waited for.
		defer built.Client.Close()
		collectors = append(collectors, built.Metrics)
	}
	if cfg.Proxied() && o.proxySecret == "" {
		logger.Warn("channelsd: no --proxy-secret: the backend calls are not signed, and the backend cannot tell them from anyone's")
	}
	if o.config != "" {
		logger.Info("channelsd: channels from the configuration file", "file", o.config, "channels", len(cfg.Channels))
	}
	n, err := node.NewWithContext(ctx, node.Config{
		Addr:            o.addr,
		SocketPath:      o.socketPath,
		AllowedOrigins:  splitList(o.allowedOrigins),
		IdleTimeout:     o.idleTimeout,
		MaxFrameSize:    o.maxFrameSize,
		MaxChannels:     o.maxChannels,
		APIKey:          o.apiKey,
		MetricsPublic:   o.metricsPublic,
		DrainWindow:     o.drainWindow,
		ReportInterval:  o.reportInterval,
		Rebalance:       node.RebalanceConfig{Threshold: o.rebalance, Share: o.rebalanceShare},
		ShutdownTimeout: o.shutdownTimeout,
		Router:          built.Router,
		JoinTimeout:     built.JoinTimeout,
		SocketHandler:   built.SocketHandler,
		Home:            built.Home,
		Collectors:      collectors,
		Redis:           o.redis,
		RedisOptions: node.RedisOptions{
			Prefix:              o.redisPrefix,
			MaxMessageSize:      o.redisMaxMessage,
			PresenceHeartbeat:   o.heartbeat,
			PresenceDeadAfter:   o.deadAfter,
			PresenceCoalesce:    o.coalesce,
			PresenceMaxCoalesce: o.coalesceMax,
		},
		PresenceLimits:      presence.Limits{MaxKeyLength: o.presenceKeyLength, MaxMetaSize: o.presenceMetaSize, MaxPerTopic: o.presencePerTopic, MaxPerOwner: o.presencePerJoin},
		PresenceMaxCoalesce: o.coalesceMax,
		History:             o.historyRules,
		NodeID:              nodeID,
		Logger:              logger,

		// Limits (README "Limits").
		MaxSockets:           o.maxSockets,
		MaxPendingUpgrades:   o.maxPendingUpgrades,
		HandshakeTimeout:     o.handshakeTimeout,
		MaxPayloadSize:       o.maxPayloadSize,
		MaxTopicLength:       o.maxTopicLength,
		MaxEventLength:       o.maxEventLength,
		MaxRefLength:         o.maxRefLength,
		MaxMessagesPerSecond: rateLimitFlag(o.maxMessagesPerSec),
		Burst:                o.burst,
		LongPollMaxSessions:  o.lpMaxSessions,
		LongPollMaxBuffered:  o.lpMaxBuffered,

		LongPollMaxBufferedBytes:   o.lpMaxBufferedBytes,
		LongPollMaxAnswerBytes:     o.lpMaxAnswerBytes,
		LongPollIOTimeout:          o.lpIOTimeout,
		LongPollMaxBodyBuffers:     o.lpMaxBodyBuffers,
		LongPollMaxSessionsPerAddr: o.lpMaxPerAddr,
		TrustedProxies:             splitList(o.trustedProxies),
		HTTPIdleTimeout:            o.httpIdleTimeout,
		HTTPRequestTimeout:         o.httpRequestTimeout,
		MaxHeaderBytes:             o.maxHeaderBytes,
		MaxConnections:             o.maxConnections,
		MessageTimeout:             o.messageTimeout,
		MaxMessageBuffers:          o.maxMessageBuffers,
		MaxURLLength:               o.maxURLLength,
	})
	if err != nil {
		return err
	}
	ep = n.Endpoint()
	if o.pprofAddr != "" {
		go servePprof(o.pprofAddr, logger)
	}
	if o.returnMemory > 0 {
		// Started before the node is ready, so that a reading of its
		// goroutines taken once it is ready already counts this one.
		go newMemoryReturner().run(ctx, o.returnMemory, logger)
	}
	if err := n.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	// A second signal stops the process at once (the default action).
	stop()
	st := n.DrainStatus()
	logger.Info("channelsd: signal received, draining and stopping", "already_draining", st.Draining, "sockets", n.Endpoint().SocketCount(), "drain_window", o.drainWindow, "shutdown_timeout", o.shutdownTimeout)
	return n.Shutdown(context.Background())
}

// defaultGCPercent is the collector's target when GOGC is not set. An idle
// node's memory is mostly the sockets' live heap times (1 + GOGC/100), and
// a node exists to hold many idle sockets; the collector's extra CPU is
// paid while connections pour in (README "Configuration").
const defaultGCPercent = 50

// setDefaultGCPercent applies defaultGCPercent unless the operator chose
// with GOGC (GOGC=100 restores Go's default, GOGC=off turns the collector
// off).
func setDefaultGCPercent() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
}

// secretFlags are the flags whose values are secrets (--redis when it
// holds a password).
var secretFlags = map[string]bool{"api-key": true, "token-secret": true, "token-secret-previous": true, "redis": true, "proxy-secret": true}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
