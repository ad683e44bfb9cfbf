package app

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/proxy"
	"github.com/channelsd/channelsd/pubsub"
)

// Config is a configuration (channelsd --config, or DefaultConfig): the
// channels the node serves, by topic pattern, and what decides them: an
// application backend's HTTP calls (README "Channels for any backend") or
// a channel built into channelsd (app).
type Config struct {
	// Home names the page served at "/": "demo" (DemoHandler), or none.
	Home     string          `yaml:"home"`
	Proxy    ProxySettings   `yaml:"proxy"`
	Connect  *ConnectConfig  `yaml:"connect"`
	Channels []ChannelConfig `yaml:"channels"`
}

// ProxySettings tunes the backend calls (proxy.Config).
type ProxySettings struct {
	Timeout         time.Duration `yaml:"timeout"`
	MaxConnections  int           `yaml:"max_connections"`
	Retries         *int          `yaml:"retries"` // absent: the default; 0: none
	MaxResponseSize int64         `yaml:"max_response_size"`
}

// ConnectConfig makes the backend decide connects (proxy.ConnectHandler).
type ConnectConfig struct {
	Proxy   string   `yaml:"proxy"`
	Headers []string `yaml:"headers"`
}

// CallConfig is one backend call's URL.
type CallConfig struct {
	Proxy string `yaml:"proxy"`
}

// HistoryConfig is a topic pattern's history (pubsub.HistoryOptions).
type HistoryConfig struct {
	Size int           `yaml:"size"`
	TTL  time.Duration `yaml:"ttl"`
}

// ChannelConfig is one topic pattern's channels.
type ChannelConfig struct {
	Topic string `yaml:"topic"`
	// App names a channel built into channelsd (hooks), which then
	// answers the joins and events itself.
	App string `yaml:"app"`
	// Private topics are joined only with a token whose topics claim
	// names them (auth.Policy).
	Private         bool           `yaml:"private"`
	Presence        bool           `yaml:"presence"`
	History         *HistoryConfig `yaml:"history"`
	ClientBroadcast []string       `yaml:"client_broadcast"`
	Join            *CallConfig    `yaml:"join"`
	Events          *CallConfig    `yaml:"events"`
	Leave           *CallConfig    `yaml:"leave"`
}

// LoadConfig reads and checks a configuration file. Every error names
// the file and, where there is one, the line.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig checks a configuration named name (for its errors).
func ParseConfig(name string, data []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // a misspelled key is an error, not a silent default
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config: %s: empty file", name)
		}
		return nil, fmt.Errorf("config: %s: %s", name, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("config: %s: %w", name, err)
	}
	if err := cfg.check(); err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("config: %s: line %d: %s: %s", name, lineOf(&root, ce.path...), pathString(ce.path), ce.msg)
		}
		return nil, fmt.Errorf("config: %s: %w", name, err)
	}
	return &cfg, nil
}

// configError is a value that parses but is wrong; path leads to it in
// the document (keys and indexes), for its line.
type configError struct {
	path []any
	msg  string
}

func (e *configError) Error() string { return pathString(e.path) + ": " + e.msg }

func bad(msg string, path ...any) error { return &configError{path: path, msg: msg} }

func pathString(path []any) string {
	var b strings.Builder
	for _, p := range path {
		switch p := p.(type) {
		case int:
			b.WriteString("[" + strconv.Itoa(p) + "]")
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(p)
		}
	}
	return b.String()
}

// lineOf returns the line of the node at path, or of the deepest part of
// it that exists.
func lineOf(n *yaml.Node, path ...any) int {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, p := range path {
		var next *yaml.Node
		switch p := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == p {
						next = n.Content[i+1]
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && p < len(n.Content) {
				next = n.Content[p]
			}
		}
		if next == nil {
			break
		}
		n, line = next, next.Line
	}
	return line
}

func (cfg *Config) check() error {
	p := cfg.Proxy
	switch {
	case p.Timeout < 0:
		return bad("must not be negative", "proxy", "timeout")
	case p.MaxConnections < 0:
		return bad("must not be negative", "proxy", "max_connections")
	case p.MaxResponseSize < 0:
		return bad("must not be negative", "proxy", "max_response_size")
	case p.Retries != nil && (*p.Retries < 0 || *p.Retries > proxy.MaxRetries):
		return bad(fmt.Sprintf("must be 0..%d", proxy.MaxRetries), "proxy", "retries")
	}
	if cfg.Home != "" && cfg.Home != HomeDemo {
		return bad(fmt.Sprintf("%q: the only page is %q", cfg.Home, HomeDemo), "home")
	}
	if c := cfg.Connect; c != nil {
		if err := checkURL(c.Proxy); err != nil {
			return bad(err.Error(), "connect", "proxy")
		}
		for i, h := range c.Headers {
			if h == "" || strings.ContainsAny(h, " :\t") {
				return bad(fmt.Sprintf("%q is not a header name", h), "connect", "headers", i)
			}
		}
	}
	if len(cfg.Channels) == 0 {
		return bad("at least one channel is needed", "channels")
	}
	seen := map[string]bool{}
	for i, ch := range cfg.Channels {
		if err := ch.check(i); err != nil {
			return err
		}
		if seen[ch.Topic] {
			return bad(fmt.Sprintf("%q is declared twice", ch.Topic), "channels", i, "topic")
		}
		seen[ch.Topic] = true
	}
	return nil
}

func (ch *ChannelConfig) check(i int) error {
	star := strings.IndexByte(ch.Topic, '*')
	switch {
	case ch.Topic == "":
		return bad("a topic pattern is needed", "channels", i, "topic")
	case star >= 0 && star != len(ch.Topic)-1:
		return bad(fmt.Sprintf("%q: '*' is only allowed at the end", ch.Topic), "channels", i, "topic")
	case channels.ReservedTopic(ch.Topic):
		return bad(fmt.Sprintf("%q: topics beginning with phx: are the server's", ch.Topic), "channels", i, "topic")
	}
	if h := ch.History; h != nil {
		if h.Size < 0 || h.Size > pubsub.MaxHistorySize {
			return bad(fmt.Sprintf("must be 0..%d", pubsub.MaxHistorySize), "channels", i, "history", "size")
		}
		if h.TTL != 0 && h.TTL < time.Second {
			return bad("must be at least 1s", "channels", i, "history", "ttl")
		}
	}
	if ch.App != "" {
		h, ok := hooks[ch.App]
		switch {
		case !ok:
			return bad(fmt.Sprintf("%q: no such app (%s)", ch.App, hookNames()), "channels", i, "app")
		case ch.Presence && !h.presence:
			return bad(fmt.Sprintf("app %q tracks presence on its own terms", ch.App), "channels", i, "presence")
		case len(ch.ClientBroadcast) > 0:
			return bad(fmt.Sprintf("app %q answers its events itself", ch.App), "channels", i, "client_broadcast")
		}
	}
	for j, ev := range ch.ClientBroadcast {
		if ev == "" || strings.HasPrefix(ev, "phx_") {
			return bad(fmt.Sprintf("%q is empty or reserved", ev), "channels", i, "client_broadcast", j)
		}
	}
	for _, c := range []struct {
		key  string
		call *CallConfig
	}{{"join", ch.Join}, {"events", ch.Events}, {"leave", ch.Leave}} {
		if c.call == nil {
			continue
		}
		if ch.App != "" {
			return bad(fmt.Sprintf("app %q answers its joins and events itself", ch.App), "channels", i, c.key)
		}
		if err := checkURL(c.call.Proxy); err != nil {
			return bad(err.Error(), "channels", i, c.key, "proxy")
		}
	}
	return nil
}

func checkURL(s string) error {
	if s == "" {
		return errors.New("a URL is needed")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http:// or https:// URL", s)
	}
	return nil
}

// Proxied reports whether the configuration makes any backend call.
func (cfg *Config) Proxied() bool {
	if cfg.Connect != nil {
		return true
	}
	for _, ch := range cfg.Channels {
		if ch.Join != nil || ch.Events != nil || ch.Leave != nil {
			return true
		}
	}
	return false
}
