package app

import (
	_ "embed"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/channels/proxy"
	"github.com/channelsd/channelsd/pubsub"
)

// DefaultConfig is the configuration channelsd serves without --config
// (channelsd --print-default-config prints it): the demo page and its
// chat rooms, each a built-in app with presence and history.
//
//go:embed default.yaml
var DefaultConfig []byte

// HomeDemo is the Config.Home value that serves the demo page.
const HomeDemo = "demo"

// Default returns DefaultConfig, parsed.
func Default() *Config {
	cfg, err := ParseConfig("default configuration", DefaultConfig)
	if err != nil {
		panic(err) // a test parses it: never in a built binary
	}
	return cfg
}

// A hook is a channel built into channelsd, which a configuration names
// with app: what no key of the file can say (a room that names its
// members and stamps their messages with the name, the conformance
// channel's test events) without a backend of its own.
type hook struct {
	// presence: the channel tracks its members when the configuration
	// says presence (else it manages presence itself, or never does).
	presence bool
	factory  func(ch *ChannelConfig, opts Options) channels.ChannelFactory
}

// hooks are the apps a configuration may name.
var hooks = map[string]hook{
	"room": {presence: true, factory: func(ch *ChannelConfig, opts Options) channels.ChannelFactory {
		cfg := &roomConfig{maxUser: opts.maxUser(), presence: ch.Presence}
		return func(string) channels.Channel { return &roomChannel{roomConfig: cfg} }
	}},
	"conformance": {factory: func(_ *ChannelConfig, opts Options) channels.ChannelFactory {
		return func(string) channels.Channel { return &conformanceChannel{opts: opts} }
	}},
}

// hookNames lists the apps, for an error.
func hookNames() string {
	names := make([]string, 0, len(hooks))
	for n := range hooks {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// conformanceChannelConfig is what Options.Conformance adds.
var conformanceChannelConfig = ChannelConfig{Topic: "conformance:*", App: "conformance"}

// Built is what a configuration makes of the node.
type Built struct {
	Router        *channels.Router
	SocketHandler channels.SocketHandler
	// Home is the page at "/"; nil: none.
	Home http.Handler
	// JoinTimeout is the wait for a proxied join's answer, longer than
	// the backend call's own timeout; zero: channels.DefaultJoinTimeout.
	JoinTimeout time.Duration
	// Client calls the backend, nil when every channel is an app and
	// sockets connect without a call; Close it after the node has stopped
	// (the leaves in flight are waited for). Metrics counts its calls
	// (nil likewise).
	Client  *proxy.Client
	Metrics *proxy.Metrics
}

// Build makes the node's router, connect handler and page of a checked
// configuration. Every route is guarded by an auth.Policy whose private
// topics are the channels marked private: a token's topics claim bounds
// every join (a route is left unguarded when that changes nothing: no
// tokens, and no private pattern overlapping its own). Without a connect proxy sockets connect through
// SocketHandler(opts). opts.Conformance adds the conformance channel.
func (cfg *Config) Build(opts Options) (*Built, error) {
	b := &Built{SocketHandler: SocketHandler(opts)}
	chans := cfg.Channels
	if opts.Conformance && !slices.ContainsFunc(chans, func(c ChannelConfig) bool { return c.Topic == conformanceChannelConfig.Topic }) {
		chans = append(slices.Clip(chans), conformanceChannelConfig)
	}
	if cfg.Connect != nil || slices.ContainsFunc(chans, func(c ChannelConfig) bool { return c.App == "" }) {
		b.Metrics = proxy.NewMetrics()
		pc := proxy.Config{Timeout: cfg.Proxy.Timeout, MaxConns: cfg.Proxy.MaxConnections, MaxResponseSize: cfg.Proxy.MaxResponseSize,
			Secret: []byte(opts.ProxySecret), Metrics: b.Metrics}
		if r := cfg.Proxy.Retries; r != nil {
			pc.Retries = *r
			if *r == 0 {
				pc.Retries = -1
			}
		}
		client, err := proxy.NewClient(pc)
		if err != nil {
			return nil, err
		}
		b.Client = client
		// A join waits for its backend call: the wait for a join's
		// answer must outlast the call's own timeout.
		if t := cfg.Proxy.Timeout; t > 0 {
			b.JoinTimeout = max(channels.DefaultJoinTimeout, t+time.Second)
		}
	}
	policy := &auth.Policy{}
	for _, ch := range chans {
		if ch.Private {
			policy.Private = append(policy.Private, ch.Topic)
		}
	}
	b.Router = &channels.Router{}
	for i := range chans {
		ch := &chans[i]
		if ch.History != nil && !opts.noHistory {
			b.Router.History(ch.Topic, pubsub.HistoryOptions{Size: ch.History.Size, TTL: ch.History.TTL})
		}
		var f channels.ChannelFactory
		if ch.App != "" {
			h, ok := hooks[ch.App]
			if !ok {
				return nil, fmt.Errorf("app: channel %q: no such app %q", ch.Topic, ch.App)
			}
			f = h.factory(ch, opts)
		} else {
			spec := proxy.Spec{Presence: ch.Presence, ClientBroadcast: ch.ClientBroadcast}
			if ch.Join != nil {
				spec.Join = ch.Join.Proxy
			}
			if ch.Events != nil {
				spec.Event = ch.Events.Proxy
			}
			if ch.Leave != nil {
				spec.Leave = ch.Leave.Proxy
			}
			f = b.Client.Factory(spec)
		}
		// Without tokens no socket has claims, and the policy then
		// allows every join of a route that no private pattern
		// overlaps: the guard, a wrapper allocated per join and kept as
		// long as the join, would change nothing there.
		if opts.Tokens != nil || !policy.AllowsAllWithoutClaims(ch.Topic) {
			f = policy.Guard(f)
		}
		b.Router.Handle(ch.Topic, f)
	}
	if c := cfg.Connect; c != nil {
		headers := make([]string, len(c.Headers))
		for i, h := range c.Headers {
			headers[i] = http.CanonicalHeaderKey(h)
		}
		b.SocketHandler = &proxy.ConnectHandler{Client: b.Client, URL: c.Proxy, Headers: headers}
	}
	if cfg.Home == HomeDemo {
		b.Home = DemoHandler(opts.SocketPath)
	}
	return b, nil
}
