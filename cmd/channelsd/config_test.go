package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	cfg, err := parseConfig("shop.yaml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Proxy.Timeout != 2*time.Second || cfg.Proxy.MaxConnections != 16 || cfg.Proxy.Retries == nil || *cfg.Proxy.Retries != 0 {
		t.Errorf("proxy settings %+v", cfg.Proxy)
	}
	if !cfg.proxied() {
		t.Error("a file with proxies is not proxied")
	}
	b, err := cfg.build("s")
	if err != nil {
		t.Fatal(err)
	}
	defer b.client.Close()
	for topic, want := range map[string]bool{"room:lobby": true, "order:7": true, "orders": false, "private:x": false} {
		if _, ok := b.router.Match(topic); ok != want {
			t.Errorf("route %s: %v, want %v", topic, ok, want)
		}
	}
	policy := b.router.HistoryPolicy(nil)
	if o := policy("room:lobby"); o != (pubsub.HistoryOptions{Size: 100, TTL: 5 * time.Minute}) {
		t.Errorf("room history %+v", o)
	}
	if policy("order:7").Enabled() {
		t.Error("order:* keeps a history it did not ask for")
	}
	if b.handler == nil {
		t.Error("no connect handler for a connect proxy")
	}

	plain, err := parseConfig("plain.yaml", []byte("channels:\n  - topic: lobby\n"))
	if err != nil {
		t.Fatal(err)
	}
	if plain.proxied() {
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig("c.yaml", []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "config: c.yaml: ") {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

func TestCheckConfigCommand(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte(goodConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("channels:\n  - topic: a\n    jion: {proxy: http://a/j}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := checkConfigCommand([]string{"--check-config", good}, &out); err != nil || !strings.Contains(out.String(), "ok, 2 channels") {
		t.Errorf("good file: %v, %q", err, out.String())
	}
	if err := checkConfigCommand([]string{"--check-config=" + bad}, &out); err == nil || !strings.Contains(err.Error(), "line 3: field jion not found") {
		t.Errorf("bad file: %v", err)
	}
	if err := checkConfigCommand([]string{"--check-config", filepath.Join(dir, "none.yaml")}, &out); err == nil {
		t.Error("a missing file passed")
	}
	if err := checkConfigCommand([]string{"--check-config"}, &out); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("no file: %v", err)
	}
}

// --config with --conformance is refused before anything starts: the
// file replaces the default application, conformance channel included.
func TestRunRefusesConfigWithConformance(t *testing.T) {
	cleanEnv(t)
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("channels:\n  - topic: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run([]string{"--config", path, "--conformance"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--conformance") {
		t.Errorf("run: %v", err)
	}
	err = run([]string{"--config", filepath.Join(t.TempDir(), "none.yaml")}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "config:") {
		t.Errorf("run with a missing file: %v", err)
	}
}
