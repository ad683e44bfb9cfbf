package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
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

// fileConfig is the configuration file (--config): the channels the node
// serves, by topic pattern, and the backend that decides them (README
// "Channels for any backend").
type fileConfig struct {
	Proxy    proxySettings   `yaml:"proxy"`
	Connect  *connectConfig  `yaml:"connect"`
	Channels []channelConfig `yaml:"channels"`
}

type proxySettings struct {
	Timeout         time.Duration `yaml:"timeout"`
	MaxConnections  int           `yaml:"max_connections"`
	Retries         *int          `yaml:"retries"` // absent: the default; 0: none
	MaxResponseSize int64         `yaml:"max_response_size"`
}

type connectConfig struct {
	Proxy   string   `yaml:"proxy"`
	Headers []string `yaml:"headers"`
}

type callConfig struct {
	Proxy string `yaml:"proxy"`
}

type historyConfig struct {
	Size int           `yaml:"size"`
	TTL  time.Duration `yaml:"ttl"`
}

type channelConfig struct {
	Topic           string         `yaml:"topic"`
	Presence        bool           `yaml:"presence"`
	History         *historyConfig `yaml:"history"`
	ClientBroadcast []string       `yaml:"client_broadcast"`
	Join            *callConfig    `yaml:"join"`
	Events          *callConfig    `yaml:"events"`
	Leave           *callConfig    `yaml:"leave"`
}

// loadConfig reads and checks a configuration file. Every error names
// the file and, where there is one, the line.
func loadConfig(path string) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parseConfig(path, data)
}

func parseConfig(name string, data []byte) (*fileConfig, error) {
	var cfg fileConfig
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

func (cfg *fileConfig) check() error {
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

func (ch *channelConfig) check(i int) error {
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
	for j, ev := range ch.ClientBroadcast {
		if ev == "" || strings.HasPrefix(ev, "phx_") {
			return bad(fmt.Sprintf("%q is empty or reserved", ev), "channels", i, "client_broadcast", j)
		}
	}
	for _, c := range []struct {
		key  string
		call *callConfig
	}{{"join", ch.Join}, {"events", ch.Events}, {"leave", ch.Leave}} {
		if c.call == nil {
			continue
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

// proxied reports whether the file makes any backend call.
func (cfg *fileConfig) proxied() bool {
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

// built is what a configuration file makes of the node.
type built struct {
	router  *channels.Router
	handler channels.SocketHandler // nil: no connect call
	client  *proxy.Client
	metrics *proxy.Metrics
}

// build makes the router (and the connect handler) of a checked file,
// signing the calls with secret.
func (cfg *fileConfig) build(secret string) (*built, error) {
	m := proxy.NewMetrics()
	pc := proxy.Config{Timeout: cfg.Proxy.Timeout, MaxConns: cfg.Proxy.MaxConnections, MaxResponseSize: cfg.Proxy.MaxResponseSize,
		Secret: []byte(secret), Metrics: m}
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
	b := &built{router: &channels.Router{}, client: client, metrics: m}
	for _, ch := range cfg.Channels {
		if ch.History != nil {
			b.router.History(ch.Topic, pubsub.HistoryOptions{Size: ch.History.Size, TTL: ch.History.TTL})
		}
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
		b.router.Handle(ch.Topic, client.Factory(spec))
	}
	if c := cfg.Connect; c != nil {
		headers := make([]string, len(c.Headers))
		for i, h := range c.Headers {
			headers[i] = http.CanonicalHeaderKey(h)
		}
		b.handler = &proxy.ConnectHandler{Client: client, URL: c.Proxy, Headers: headers}
	}
	return b, nil
}

// checkConfigCommand is `channelsd --check-config FILE`: it loads FILE as
// the node would and says whether it is valid.
func checkConfigCommand(args []string, stdout io.Writer) error {
	var path string
	switch {
	case len(args) == 2:
		path = args[1]
	case len(args) == 1 && strings.HasPrefix(args[0], "--check-config="):
		path = strings.TrimPrefix(args[0], "--check-config=")
	}
	if path == "" {
		return errors.New("usage: channelsd --check-config FILE")
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok, %d channels\n", path, len(cfg.Channels))
	return nil
}
