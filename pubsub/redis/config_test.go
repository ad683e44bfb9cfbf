package redis

import (
	"os"
	"regexp"
	"slices"
	"testing"
)

func TestParseAddress(t *testing.T) {
	cases := []struct {
		in   string
		want Options
	}{
		{"redis://localhost:6379", Options{URL: "redis://localhost:6379"}},
		{"rediss://user:s3cret@redis.example:6380/2", Options{URL: "rediss://user:s3cret@redis.example:6380/2"}},
		{"unix:///run/redis.sock?db=1", Options{URL: "unix:///run/redis.sock?db=1"}},
		{"redis:6379", Options{URL: "redis://redis:6379"}},
		{"redis-sentinel://s1:26379,s2:26380/mymaster", Options{SentinelAddrs: []string{"s1:26379", "s2:26380"}, MasterName: "mymaster"}},
		{"redis-sentinel://:p%40ss@s1,s2/mymaster/3", Options{SentinelAddrs: []string{"s1:26379", "s2:26379"}, MasterName: "mymaster", Password: "p@ss", DB: 3}},
		{"redis-sentinel://app:pw@[::1]:26379,10.0.0.2/m?sentinel_password=sp&sentinel_username=su",
			Options{SentinelAddrs: []string{"[::1]:26379", "10.0.0.2:26379"}, MasterName: "m", Username: "app", Password: "pw", SentinelUsername: "su", SentinelPassword: "sp"}},
	}
	for _, c := range cases {
		got, err := ParseAddress(c.in)
		if err != nil {
			t.Fatalf("ParseAddress(%q): %v", c.in, err)
		}
		if got.URL != c.want.URL || !slices.Equal(got.SentinelAddrs, c.want.SentinelAddrs) || got.MasterName != c.want.MasterName ||
			got.Username != c.want.Username || got.Password != c.want.Password || got.DB != c.want.DB ||
			got.SentinelUsername != c.want.SentinelUsername || got.SentinelPassword != c.want.SentinelPassword {
			t.Fatalf("ParseAddress(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if _, err := got.withDefaults(); err != nil {
			t.Fatalf("ParseAddress(%q) gave unusable options: %v", c.in, err)
		}
	}
	for _, bad := range []string{
		"", "localhost", "http://x:1", "redis://x:1/notadb",
		"redis-sentinel://s1:26379", "redis-sentinel://s1:26379/", "redis-sentinel://s1,,s2/m",
		"redis-sentinel://s1/m/x", "redis-sentinel://s1/m?bogus=1",
	} {
		if o, err := ParseAddress(bad); err == nil {
			t.Fatalf("ParseAddress(%q) = %+v, want an error", bad, o)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{URL: "redis://x:1"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(host) + `-[0-9a-f]{8}$`).MatchString(o.NodeID) {
		t.Fatalf("default NodeID %q", o.NodeID)
	}
	if o.Prefix != DefaultPrefix || o.PublishTimeout != DefaultPublishTimeout || o.QueueSize != DefaultQueueSize || o.Logger == nil {
		t.Fatalf("defaults: %+v", o)
	}
	for _, bad := range []Options{
		{},
		{URL: "redis://x:1", SentinelAddrs: []string{"s:1"}},
		{SentinelAddrs: []string{"s:1"}},
		{URL: "redis://x:1", PublishTimeout: -1},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Fatalf("%+v accepted", bad)
		}
	}
}
