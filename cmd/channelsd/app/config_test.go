package app

import (
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/channels/proxy"
	"github.com/channelsd/channelsd/pubsub"
)

const goodConfig = `# channels of a shop
proxy:
  timeout: 2s
  max_connections: 16
  retries: 0
connect:
  proxy: http://app:3000/channels/connect
  headers: [cookie, Authorization]
channels:
  - topic: "room:*"
    presence: true
    history: {size: 100, ttl: 5m}
    client_broadcast: [new_msg, typing]
  - topic: "order:*"
    join: {proxy: "http://app:3000/channels/join"}
    events: {proxy: "http://app:3000/channels/event"}
    leave: {proxy: "http://app:3000/channels/leave"}
`

func TestConfigBuilds(t *testing.T) {
	cfg, err := ParseConfig("shop.yaml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Proxy.Timeout != 2*time.Second || cfg.Proxy.MaxConnections != 16 || cfg.Proxy.Retries == nil || *cfg.Proxy.Retries != 0 {
		t.Errorf("proxy settings %+v", cfg.Proxy)
	}
	if !cfg.Proxied() {
		t.Error("a file with proxies is not proxied")
	}
	b, err := cfg.Build(Options{ProxySecret: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Client.Close()
	for topic, want := range map[string]bool{"room:lobby": true, "order:7": true, "orders": false, "private:x": false} {
		if _, ok := b.Router.Match(topic); ok != want {
			t.Errorf("route %s: %v, want %v", topic, ok, want)
		}
	}
	policy := b.Router.HistoryPolicy(nil)
	if o := policy("room:lobby"); o != (pubsub.HistoryOptions{Size: 100, TTL: 5 * time.Minute}) {
		t.Errorf("room history %+v", o)
	}
	if policy("order:7").Enabled() {
		t.Error("order:* keeps a history it did not ask for")
	}
	if _, ok := b.SocketHandler.(*proxy.ConnectHandler); !ok {
		t.Errorf("connect handler %T for a connect proxy", b.SocketHandler)
	}
	if b.Home != nil {
		t.Error("a page served without home")
	}

	plain, err := ParseConfig("plain.yaml", []byte("channels:\n  - topic: lobby\n"))
	if err != nil {
		t.Fatal(err)
	}
	if plain.Proxied() {
		t.Error("a file without proxies is proxied")
	}
}

// Each mistake is refused with the line it is on.
func TestConfigErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown key", "channels:\n  - topic: a\n    presense: true\n", "line 3: field presense not found"},
		{"wrong type", "channels:\n  - topic: a\n    presence: sometimes\n", "line 3:"},
		{"bad duration", "proxy:\n  timeout: soon\nchannels:\n  - topic: a\n", "line 2:"},
		{"not yaml", "channels:\n  - topic: [a\n", "line "},
		{"star inside", "channels:\n  - topic: a\n  - topic: \"ro*m\"\n", "line 3: channels[1].topic: \"ro*m\": '*' is only allowed at the end"},
		{"reserved", "channels:\n  - topic: \"phx:x\"\n", "line 2: channels[0].topic"},
		{"duplicate", "channels:\n  - topic: a\n  - topic: a\n", "line 3: channels[1].topic: \"a\" is declared twice"},
		{"no topic", "channels:\n  - presence: true\n", "line 2: channels[0].topic: a topic pattern is needed"},
		{"no channels", "proxy: {timeout: 1s}\n", "line 1: channels: at least one channel is needed"},
		{"bad url", "channels:\n  - topic: a\n    join:\n      proxy: ftp://x/join\n", "line 4: channels[0].join.proxy: \"ftp://x/join\" is not an http:// or https:// URL"},
		{"no url", "channels:\n  - topic: a\n    events: {}\n", "line 3: channels[0].events.proxy: a URL is needed"},
		{"history size", "channels:\n  - topic: a\n    history:\n      size: 100001\n", "line 4: channels[0].history.size"},
		{"history ttl", "channels:\n  - topic: a\n    history: {size: 1, ttl: 1ms}\n", "line 3: channels[0].history.ttl: must be at least 1s"},
		{"reserved event", "channels:\n  - topic: a\n    client_broadcast:\n      - ok\n      - phx_join\n", "line 5: channels[0].client_broadcast[1]"},
		{"retries", "proxy:\n  retries: 9\nchannels:\n  - topic: a\n", "line 2: proxy.retries: must be 0..5"},
		{"header", "connect:\n  proxy: http://a/c\n  headers: [\"Bad Header\"]\nchannels:\n  - topic: a\n", "line 3: connect.headers[0]"},
		{"empty", "", "empty file"},
		{"no such app", "channels:\n  - topic: a\n    app: chat\n", "line 3: channels[0].app: \"chat\": no such app (conformance, room)"},
		{"app with a call", "channels:\n  - topic: a\n    app: room\n    events: {proxy: http://a/e}\n", "line 4: channels[0].events: app \"room\" answers its joins and events itself"},
		{"app with client broadcast", "channels:\n  - topic: a\n    app: room\n    client_broadcast: [x]\n", "line 4: channels[0].client_broadcast"},
		{"app without presence", "channels:\n  - topic: a\n    app: conformance\n    presence: true\n", "line 4: channels[0].presence"},
		{"home", "home: index\nchannels:\n  - topic: a\n", "line 1: home: \"index\": the only page is \"demo\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("c.yaml", []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "config: c.yaml: ") {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

// The default configuration is what channelsd served before there was
// one: the demo page, room:* with presence and 100 broadcasts for 5m
// (README "Recovering missed broadcasts"), private:* for tokens only,
// sockets connecting without a backend, and no backend client.
func TestDefaultConfig(t *testing.T) {
	cfg := Default()
	if cfg.Proxied() || cfg.Home != HomeDemo {
		t.Fatalf("default configuration %+v", cfg)
	}
	b, err := cfg.Build(Options{SocketPath: "/socket"})
	if err != nil {
		t.Fatal(err)
	}
	if b.Client != nil || b.Metrics != nil || b.Home == nil || b.JoinTimeout != 0 {
		t.Errorf("built %+v", b)
	}
	if _, ok := b.SocketHandler.(*proxy.ConnectHandler); ok {
		t.Error("the default configuration connects through a backend")
	}
	policy := b.Router.HistoryPolicy(nil)
	for topic, want := range map[string]pubsub.HistoryOptions{"room:lobby": {Size: 100, TTL: 5 * time.Minute}, "private:x": {}} {
		if got := policy(topic); got != want {
			t.Errorf("%s keeps %+v, want %+v", topic, got, want)
		}
	}
	for topic, want := range map[string]bool{"room:lobby": true, "private:x": true, "conformance:x": false, "other": false} {
		if _, ok := b.Router.Match(topic); ok != want {
			t.Errorf("route %s: %v, want %v", topic, ok, want)
		}
	}
	c, err := cfg.Build(Options{Conformance: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Router.Match("conformance:x"); !ok {
		t.Error("Conformance adds no conformance:*")
	}
	if len(cfg.Channels) != 2 {
		t.Error("Build changed the configuration's channels")
	}
}

// A built-in app from a file: the room names its members and stamps
// their messages whatever the file says, but tracks presence only when
// the file asks; a private pattern is closed without a token, and a
// channel without app or call is a plain relay.
func TestConfiguredApps(t *testing.T) {
	cfg, err := ParseConfig("apps.yaml", []byte(`channels:
  - topic: "quiet:*"
    app: room
  - topic: "room:*"
    app: room
    presence: true
  - topic: "staff:*"
    app: room
    private: true
  - topic: "lobby"
    client_broadcast: [shout]
`))
	if err != nil {
		t.Fatal(err)
	}
	var built *Built
	e := newEnvRouter(t, Options{}, func(opts Options) *channels.Router {
		b, err := cfg.Build(opts)
		if err != nil {
			t.Fatal(err)
		}
		built = b
		return b.Router
	})
	t.Cleanup(func() { built.Client.Close() })
	c := e.connect(map[string]string{"user": "ann"})

	jr, _ := c.join("quiet:a", `{}`)
	ref := c.push(jr, "quiet:a", "new_msg", `{"body":"hi"}`)
	jsonEq(t, c.nextEvent("new_msg").Payload, `{"body":"hi","user":"ann"}`)
	c.expectReply(ref, "ok", `{}`)
	c.none() // no presence_state, no presence_diff

	jr, _ = c.join("room:a", `{}`)
	if keys := presenceKeys(t, c.nextEvent("presence_state").Payload); keys["ann"] == nil {
		t.Error("room:a with presence does not track ann")
	}
	c.drain()

	ref = c.nextRef()
	c.sock.HandleFrame([]byte(`["`+ref+`","`+ref+`","staff:a","phx_join",{}]`), false)
	c.expectReply(ref, "error", `{"reason":"unauthorized"}`)

	jr, _ = c.join("lobby", `{}`)
	ref = c.push(jr, "lobby", "shout", `{"a":1}`)
	jsonEq(t, c.nextEvent("shout").Payload, `{"a":1}`)
	c.expectReply(ref, "ok", `{}`)
}

// Build guards a route only where the policy can refuse a join: every
// route when sockets carry tokens, else only those a private pattern
// overlaps. An unguarded join is the room itself, with no wrapper kept
// for its lifetime.
func TestBuildGuardsWhereThePolicyCanRefuse(t *testing.T) {
	v, err := auth.NewVerifier(strings.Repeat("s", 32), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		opts    Options
		topic   string
		guarded bool
	}{
		{Options{}, "room:a", false},
		{Options{}, "private:a", true},
		{Options{Tokens: v}, "room:a", true},
		{Options{Tokens: v}, "private:a", true},
	} {
		b, err := Default().Build(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		f, ok := b.Router.Match(tc.topic)
		if !ok {
			t.Fatalf("no route for %s", tc.topic)
		}
		_, plain := f(tc.topic).(*roomChannel)
		if plain == tc.guarded {
			t.Errorf("%s with tokens %v: guarded %v, want %v", tc.topic, tc.opts.Tokens != nil, !plain, tc.guarded)
		}
	}
}
