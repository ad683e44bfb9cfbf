package main

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// flagCase is one flag of channelsd and the options field it sets. A new
// flag gets a row here rather than a test of its own.
type flagCase struct {
	flag, env string
	// def is the default in the flag's string form (the README "Limits"
	// table documents most of them, so a changed default shows here).
	def string
	// value differs from def and parseFlags accepts it on its own.
	value string
	get   func(*options) any
}

var flagCases = []flagCase{
	{"addr", "CHANNELS_ADDR", ":4000", "127.0.0.1:4001", func(o *options) any { return o.addr }},
	{"socket-path", "CHANNELS_SOCKET_PATH", "/socket", "/ws", func(o *options) any { return o.socketPath }},
	{"allowed-origins", "CHANNELS_ALLOWED_ORIGINS", "", "https://a.example", func(o *options) any { return o.allowedOrigins }},
	{"idle-timeout", "CHANNELS_IDLE_TIMEOUT", "1m0s", "5s", func(o *options) any { return o.idleTimeout }},
	{"max-frame-size", "CHANNELS_MAX_FRAME_SIZE", "1048576", "2048", func(o *options) any { return o.maxFrameSize }},
	{"message-timeout", "CHANNELS_MESSAGE_TIMEOUT", "30s", "5s", func(o *options) any { return o.messageTimeout }},
	{"max-message-buffers", "CHANNELS_MAX_MESSAGE_BUFFERS", "67108864", "-1", func(o *options) any { return o.maxMessageBuffers }},
	{"max-url-length", "CHANNELS_MAX_URL_LENGTH", "16384", "-1", func(o *options) any { return o.maxURLLength }},
	{"max-channels", "CHANNELS_MAX_CHANNELS", "100", "5", func(o *options) any { return o.maxChannels }},
	{"max-sockets", "CHANNELS_MAX_SOCKETS", "19000", "-1", func(o *options) any { return o.maxSockets }},
	{"max-pending-upgrades", "CHANNELS_MAX_PENDING_UPGRADES", "1000", "6", func(o *options) any { return o.maxPendingUpgrades }},
	{"handshake-timeout", "CHANNELS_HANDSHAKE_TIMEOUT", "10s", "3s", func(o *options) any { return o.handshakeTimeout }},
	{"max-payload-size", "CHANNELS_MAX_PAYLOAD_SIZE", "65536", "7", func(o *options) any { return o.maxPayloadSize }},
	{"max-topic-length", "CHANNELS_MAX_TOPIC_LENGTH", "256", "8", func(o *options) any { return o.maxTopicLength }},
	{"max-event-length", "CHANNELS_MAX_EVENT_LENGTH", "128", "9", func(o *options) any { return o.maxEventLength }},
	{"max-ref-length", "CHANNELS_MAX_REF_LENGTH", "64", "-1", func(o *options) any { return o.maxRefLength }},
	{"max-messages-per-second", "CHANNELS_MAX_MESSAGES_PER_SECOND", "100", "2.5", func(o *options) any { return o.maxMessagesPerSec }},
	{"burst", "CHANNELS_BURST", "200", "11", func(o *options) any { return o.burst }},
	{"longpoll-max-sessions", "CHANNELS_LONGPOLL_MAX_SESSIONS", "10000", "12", func(o *options) any { return o.lpMaxSessions }},
	{"longpoll-max-buffered", "CHANNELS_LONGPOLL_MAX_BUFFERED", "1000", "13", func(o *options) any { return o.lpMaxBuffered }},
	{"longpoll-max-buffered-bytes", "CHANNELS_LONGPOLL_MAX_BUFFERED_BYTES", "4194304", "-1", func(o *options) any { return o.lpMaxBufferedBytes }},
	// The default is also the most (one relayed answer fits one Redis
	// message), under 4 MiB.
	{"longpoll-max-answer-bytes", "CHANNELS_LONGPOLL_MAX_ANSWER_BYTES", "3080192", "1000", func(o *options) any { return o.lpMaxAnswerBytes }},
	{"longpoll-max-sessions-per-address", "CHANNELS_LONGPOLL_MAX_SESSIONS_PER_ADDRESS", "100", "7", func(o *options) any { return o.lpMaxPerAddr }},
	{"trusted-proxies", "CHANNELS_TRUSTED_PROXIES", "", "10.0.0.0/8, 192.0.2.1", func(o *options) any { return o.trustedProxies }},
	{"longpoll-max-body-buffers", "CHANNELS_LONGPOLL_MAX_BODY_BUFFERS", "67108864", "-1", func(o *options) any { return o.lpMaxBodyBuffers }},
	{"longpoll-io-timeout", "CHANNELS_LONGPOLL_IO_TIMEOUT", "10s", "3s", func(o *options) any { return o.lpIOTimeout }},
	{"presence-max-key-length", "CHANNELS_PRESENCE_MAX_KEY_LENGTH", "256", "64", func(o *options) any { return o.presenceKeyLength }},
	{"presence-max-meta-size", "CHANNELS_PRESENCE_MAX_META_SIZE", "2048", "512", func(o *options) any { return o.presenceMetaSize }},
	{"presence-max-per-topic", "CHANNELS_PRESENCE_MAX_PER_TOPIC", "10000", "-1", func(o *options) any { return o.presencePerTopic }},
	{"presence-max-per-join", "CHANNELS_PRESENCE_MAX_PER_JOIN", "16", "3", func(o *options) any { return o.presencePerJoin }},
	{"redis-max-message-size", "CHANNELS_REDIS_MAX_MESSAGE_SIZE", "2097152", "4194304", func(o *options) any { return o.redisMaxMessage }},
	{"http-idle-timeout", "CHANNELS_HTTP_IDLE_TIMEOUT", "1m0s", "5s", func(o *options) any { return o.httpIdleTimeout }},
	{"http-request-timeout", "CHANNELS_HTTP_REQUEST_TIMEOUT", "30s", "6s", func(o *options) any { return o.httpRequestTimeout }},
	{"max-header-bytes", "CHANNELS_MAX_HEADER_BYTES", "32768", "7", func(o *options) any { return o.maxHeaderBytes }},
	{"max-connections", "CHANNELS_MAX_CONNECTIONS", "0", "8", func(o *options) any { return o.maxConnections }},
	{"api-key", "CHANNELS_API_KEY", "", "k", func(o *options) any { return o.apiKey }},
	{"metrics-public", "CHANNELS_METRICS_PUBLIC", "false", "true", func(o *options) any { return o.metricsPublic }},
	{"token-secret", "CHANNELS_TOKEN_SECRET", "", "0123456789abcdef0123456789abcdef", func(o *options) any { return o.tokenSecret }},
	{"token-secret-previous", "CHANNELS_TOKEN_SECRET_PREVIOUS", "", "fedcba9876543210fedcba9876543210", func(o *options) any { return o.tokenPrevious }},
	{"log-level", "CHANNELS_LOG_LEVEL", "info", "debug", func(o *options) any { return o.logLevel }},
	{"conformance", "CHANNELS_CONFORMANCE", "false", "true", func(o *options) any { return o.conformance }},
	// 0 closes every socket at once: allowed.
	{"drain-window", "CHANNELS_DRAIN_WINDOW", "20s", "0s", func(o *options) any { return o.drainWindow }},
	{"shutdown-timeout", "CHANNELS_SHUTDOWN_TIMEOUT", "10s", "3s", func(o *options) any { return o.shutdownTimeout }},
	{"redis", "CHANNELS_REDIS", "", "redis://127.0.0.1:1", func(o *options) any { return o.redis }},
	{"redis-prefix", "CHANNELS_REDIS_PREFIX", "channelsd", "other", func(o *options) any { return o.redisPrefix }},
	{"presence-heartbeat", "CHANNELS_PRESENCE_HEARTBEAT", "5s", "1s", func(o *options) any { return o.heartbeat }},
	{"presence-dead-after", "CHANNELS_PRESENCE_DEAD_AFTER", "0s", "15s", func(o *options) any { return o.deadAfter }},
	{"presence-coalesce", "CHANNELS_PRESENCE_COALESCE", "30ms", "10ms", func(o *options) any { return o.coalesce }},
	{"presence-coalesce-max", "CHANNELS_PRESENCE_COALESCE_MAX", "0s", "2s", func(o *options) any { return o.coalesceMax }},
	{"history", "CHANNELS_HISTORY", "", "room:*=100,5m;lobby=20", func(o *options) any { return o.history }},
	{"config", "CHANNELS_CONFIG", "", "channelsd.yaml", func(o *options) any { return o.config }},
	{"proxy-secret", "CHANNELS_PROXY_SECRET", "", "s", func(o *options) any { return o.proxySecret }},
	{"node-id", "CHANNELS_NODE_ID", "", "n1", func(o *options) any { return o.nodeID }},
	{"return-memory-after", "CHANNELS_RETURN_MEMORY_AFTER", "10s", "0s", func(o *options) any { return o.returnMemory }},
	{"pprof-addr", "CHANNELS_PPROF_ADDR", "", "127.0.0.1:6060", func(o *options) any { return o.pprofAddr }},
	{"report-interval", "CHANNELS_REPORT_INTERVAL", "2s", "5s", func(o *options) any { return o.reportInterval }},
	{"rebalance-threshold", "CHANNELS_REBALANCE_THRESHOLD", "0", "0.25", func(o *options) any { return o.rebalance }},
	{"rebalance-share", "CHANNELS_REBALANCE_SHARE", "0.05", "0.1", func(o *options) any { return o.rebalanceShare }},
}

// refusedCases are settings parseFlags must refuse, each with what its
// error must name: a misspelt flag is refused too, but for another reason.
var refusedCases = []struct {
	args []string
	env  map[string]string
	want string
}{
	{args: []string{"--handshake-timeout=0"}, want: "--handshake-timeout"},
	{args: []string{"--max-messages-per-second=-1"}, want: "--max-messages-per-second"},
	{args: []string{"--burst=-1"}, want: "--burst"},
	{args: []string{"--longpoll-max-buffered=0"}, want: "--longpoll-max-buffered"},
	{args: []string{"--longpoll-max-answer-bytes=0"}, want: "--longpoll-max-answer-bytes"},
	{args: []string{"--longpoll-max-answer-bytes=3080193"}, want: "--longpoll-max-answer-bytes"},
	{args: []string{"--longpoll-max-answer-bytes=100000000"}, want: "--longpoll-max-answer-bytes"},
	{args: []string{"--longpoll-io-timeout=0"}, want: "--longpoll-io-timeout"},
	{args: []string{"--http-idle-timeout=0"}, want: "--http-idle-timeout"},
	{args: []string{"--http-request-timeout=0"}, want: "--http-request-timeout"},
	{args: []string{"--message-timeout=0"}, want: "--message-timeout"},
	{args: []string{"--shutdown-timeout=0"}, want: "--shutdown-timeout"},
	{args: []string{"--drain-window=-1s"}, want: "--drain-window"},
	{args: []string{"--presence-max-key-length=0"}, want: "--presence-max-key-length"},
	{args: []string{"--presence-max-meta-size=0"}, want: "--presence-max-meta-size"},
	{args: []string{"--presence-max-per-topic=0"}, want: "--presence-max-per-topic"},
	{args: []string{"--presence-max-per-join=0"}, want: "--presence-max-per-join"},
	// With --redis a relayed long-poll POST of the largest body
	// (--max-frame-size) plus 64 KiB of headers must fit one message.
	{args: []string{"--redis=redis://127.0.0.1:1", "--redis-max-message-size=1000"}, want: "--redis-max-message-size"},
	{args: []string{"--redis=redis://127.0.0.1:1", "--redis-max-message-size=1048576"}, want: "--redis-max-message-size"},
	{args: []string{"--redis=redis://127.0.0.1:1", "--redis-max-message-size=1114111"}, want: "--redis-max-message-size"},
	{args: []string{"--redis=redis://127.0.0.1:1", "--max-frame-size=4194304"}, want: "--max-frame-size"},
	{env: map[string]string{"CHANNELS_REDIS": "redis://127.0.0.1:1", "CHANNELS_REDIS_MAX_MESSAGE_SIZE": "1048576"}, want: "--redis-max-message-size"},
	// Profiles show the process's memory: loopback only.
	{args: []string{"--pprof-addr=:6060"}, want: "--pprof-addr"},
	{args: []string{"--pprof-addr=0.0.0.0:6060"}, want: "--pprof-addr"},
	{args: []string{"--pprof-addr=[::]:6060"}, want: "--pprof-addr"},
	{args: []string{"--pprof-addr=10.0.0.5:6060"}, want: "--pprof-addr"},
	{args: []string{"--pprof-addr=pprof.example:6060"}, want: "--pprof-addr"},
	{args: []string{"--pprof-addr=6060"}, want: "--pprof-addr"},
	{env: map[string]string{"CHANNELS_PPROF_ADDR": ":6060"}, want: "--pprof-addr"},
	{env: map[string]string{"CHANNELS_MAX_SOCKETS": "many"}, want: "CHANNELS_MAX_SOCKETS"},
	{args: []string{"--max-sockets=many"}, want: "-max-sockets"},
	{args: []string{"stray"}, want: "unexpected argument"},
	// A rule the syntax refuses stops the start with its reason.
	{args: []string{"--history=room:*"}, want: "--history: pubsub: history rule \"room:*\""},
	{args: []string{"--history=room:*=100001"}, want: "--history: pubsub: history rule \"room:*=100001\": size"},
	{args: []string{"--history=room:*=10,soon"}, want: "ttl"},
	{args: []string{"--history=ro*m=10"}, want: "'*'"},
	{env: map[string]string{"CHANNELS_HISTORY": "lobby=-3"}, want: "--history"},
}

// acceptedCases are combinations, and edges, parseFlags must take; every
// value given is read back through its flagCases row.
var acceptedCases = [][]string{
	// Without --redis the Redis message bound does not apply.
	{"--max-frame-size=4194304"},
	{"--redis=redis://127.0.0.1:1", "--redis-max-message-size=4194304"},
	{"--redis=redis://127.0.0.1:1", "--redis-max-message-size=1114112"},
	{"--redis=redis://127.0.0.1:1", "--max-frame-size=4194304", "--redis-max-message-size=4259840"},
	{"--pprof-addr=127.0.0.1:6060"},
	{"--pprof-addr=[::1]:6060"},
	{"--pprof-addr=localhost:6060"},
	{"--pprof-addr=127.0.0.2:0"},
	{"--http-idle-timeout=-1s", "--http-request-timeout=-1s"},
	{"--max-messages-per-second=0", "--burst=0"},
	{"--history=lobby=1"},
	{"--history=room:*=0"},
	{"--history=room:*=100000,1s private:*=5"},
}

// cleanEnv unsets (an empty value counts as unset) every CHANNELS_*
// variable of the table for the test, so the host's cannot leak in.
func cleanEnv(t *testing.T) {
	for _, c := range flagCases {
		t.Setenv(c.env, "")
	}
}

func flagRow(name string) (flagCase, bool) {
	i := slices.IndexFunc(flagCases, func(c flagCase) bool { return c.flag == name })
	if i < 0 {
		return flagCase{}, false
	}
	return flagCases[i], true
}

// Every flag has its default, takes a value from the command line and
// from its environment variable, and the command line wins over the
// environment.
func TestFlagValues(t *testing.T) {
	for _, c := range flagCases {
		t.Run(c.flag, func(t *testing.T) {
			cleanEnv(t)
			if c.value == c.def {
				t.Fatalf("row's value %q is its default", c.value)
			}
			read := func(args ...string) string {
				t.Helper()
				o, err := parseFlags(args, io.Discard)
				if err != nil {
					t.Fatalf("%v: %v", args, err)
				}
				return fmt.Sprint(c.get(o))
			}
			if got := read(); got != c.def {
				t.Errorf("default %q, want %q", got, c.def)
			}
			if got := read("--" + c.flag + "=" + c.value); got != c.value {
				t.Errorf("--%s=%s: got %q", c.flag, c.value, got)
			}
			t.Setenv(c.env, c.value)
			if got := read(); got != c.value {
				t.Errorf("%s=%s: got %q", c.env, c.value, got)
			}
			if got := read("--" + c.flag + "=" + c.def); got != c.def {
				t.Errorf("%s=%s --%s=%s: got %q, want the command line's", c.env, c.value, c.flag, c.def, got)
			}
		})
	}
}

func TestFlagsRefused(t *testing.T) {
	for _, c := range refusedCases {
		var name []string
		for k, v := range c.env {
			name = append(name, k+"="+v)
		}
		slices.Sort(name)
		t.Run(strings.Join(append(name, c.args...), " "), func(t *testing.T) {
			cleanEnv(t)
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			if _, err := parseFlags(c.args, io.Discard); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v, want refused naming %s", err, c.want)
			}
		})
	}
}

func TestFlagsAccepted(t *testing.T) {
	for _, args := range acceptedCases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cleanEnv(t)
			o, err := parseFlags(args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range args {
				name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				c, ok := flagRow(name)
				if !ok {
					t.Fatalf("no row for --%s in flagCases", name)
				}
				if got := fmt.Sprint(c.get(o)); got != value {
					t.Errorf("--%s: got %q, want %q", name, got, value)
				}
			}
		})
	}
}

// Every flag --help shows has a row, with the environment variable --help
// names for it (k8s/manifests_test.go trusts --help for those names).
func TestEveryFlagHasARow(t *testing.T) {
	cleanEnv(t)
	var help bytes.Buffer
	_, _ = parseFlags([]string{"--help"}, &help)
	entry := regexp.MustCompile(`(?m)^  -([a-z0-9-]+)[^\n]*\n(?:    [^\n]*\n)*`)
	envName := regexp.MustCompile(`\(env (CHANNELS_[A-Z0-9_]+)\)`)
	var shown []string
	for _, m := range entry.FindAllStringSubmatch(help.String(), -1) {
		name := m[1]
		shown = append(shown, name)
		env := envName.FindStringSubmatch(m[0])
		if env == nil {
			t.Errorf("--help names no environment variable for -%s", name)
			continue
		}
		if c, ok := flagRow(name); !ok {
			t.Errorf("-%s has no row in flagCases: add one", name)
		} else if c.env != env[1] {
			t.Errorf("-%s: --help says %s, the row %s", name, env[1], c.env)
		}
	}
	for _, c := range flagCases {
		if !slices.Contains(shown, c.flag) {
			t.Errorf("row --%s is not in --help", c.flag)
		}
	}
}

func TestSplitList(t *testing.T) {
	for in, want := range map[string][]string{
		"":                      nil,
		" , ,":                  nil,
		"10.0.0.0/8, 192.0.2.1": {"10.0.0.0/8", "192.0.2.1"},
		"a,,b ":                 {"a", "b"},
	} {
		if got := splitList(in); !slices.Equal(got, want) {
			t.Errorf("splitList(%q) = %q, want %q", in, got, want)
		}
	}
}

// --history reaches the node as the rules pubsub.ParseHistoryRules reads
// from it, in order.
func TestHistoryRules(t *testing.T) {
	cleanEnv(t)
	o, err := parseFlags([]string{"--history=room:*=100,5m;lobby=20"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []pubsub.HistoryRule{
		{Pattern: "room:*", HistoryOptions: pubsub.HistoryOptions{Size: 100, TTL: 5 * time.Minute}},
		{Pattern: "lobby", HistoryOptions: pubsub.HistoryOptions{Size: 20}},
	}
	if !slices.Equal(o.historyRules, want) {
		t.Errorf("rules %+v, want %+v", o.historyRules, want)
	}
	if o, err = parseFlags(nil, io.Discard); err != nil || o.historyRules != nil {
		t.Errorf("no --history: rules %+v, err %v; want none", o.historyRules, err)
	}
}
