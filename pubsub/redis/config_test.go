package redis

import (
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
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
		{"redis-cluster://r1:7000,r2", Options{URL: "redis-cluster://r1:7000,r2"}},
		{"rediss-cluster://u:p%40ss@r1/0?dial_timeout=3s", Options{URL: "rediss-cluster://u:p%40ss@r1/0?dial_timeout=3s"}},
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
		"redis-cluster://", "redis-cluster://r1,,r2", "redis-cluster://r1/2", "redis-cluster://r1?bogus=1",
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

// TestClusterURL: a cluster URL reaches go-redis's cluster options with
// every node, the credentials and TLS, and the client settings every
// channelsd client has (no retries or redirects unless the URL asks,
// RESP2).
func TestClusterURL(t *testing.T) {
	o, err := ParseAddress("rediss-cluster://app:p%40ss@r1:7000,r2,[::1]:7002?dial_timeout=3s")
	if err != nil {
		t.Fatal(err)
	}
	if !o.Cluster() || (Options{URL: "redis://r1"}).Cluster() {
		t.Fatal("Cluster() does not tell a cluster URL from another")
	}
	co, err := parseClusterURL(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"r1:7000", "r2:6379", "[::1]:7002"}; !slices.Equal(co.Addrs, want) {
		t.Errorf("Addrs %v, want %v", co.Addrs, want)
	}
	if co.Username != "app" || co.Password != "p@ss" || co.TLSConfig == nil || co.DialTimeout != 3*time.Second || co.explicitRedirects {
		t.Errorf("options %+v, explicit redirects %v", co.ClusterOptions, co.explicitRedirects)
	}
	if co.TLSConfig != nil && co.TLSConfig.ServerName != "" {
		t.Errorf("TLS checks every node as %q, not as the host it dials", co.TLSConfig.ServerName)
	}
	if got := o.describe(); got != "the Redis Cluster at r1:7000,r2:6379,[::1]:7002" {
		t.Errorf("describe() = %q", got)
	}
	c, err := o.NewClient("test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cc, ok := c.(*goredis.ClusterClient)
	if !ok {
		t.Fatalf("NewClient made a %T, want a cluster client", c)
	}
	if got := cc.Options(); got.MaxRedirects != 0 || got.MaxRetries != -1 || got.Protocol != 2 || got.ClientName != "test" {
		t.Errorf("client options: redirects %d, retries %d, protocol %d, name %q", got.MaxRedirects, got.MaxRetries, got.Protocol, got.ClientName)
	}
	o, _ = ParseAddress("redis-cluster://r1?max_redirects=2")
	c, err = o.NewClient("test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.(*goredis.ClusterClient).Options().MaxRedirects; got != 2 {
		t.Errorf("max_redirects=2 gave MaxRedirects %d", got)
	}
}

// TestClientSettingsForEveryKind: NewClient gives a single Redis, a
// Sentinel-managed master and a Redis Cluster the same settings (no
// retries, context deadlines, RESP2, no CLIENT SETINFO, small buffers),
// and what a URL sets itself (here the protocol) wins.
func TestClientSettingsForEveryKind(t *testing.T) {
	type settings struct {
		name                       string
		ctxTimeout, noIdentity     bool
		retries, dialer, protocol  int
		read, write, pread, pwrite int
	}
	want := settings{"n", true, true, 0, 1, 2, clientBufferSize, clientBufferSize, clientBufferSize, clientBufferSize}
	of := func(c goredis.UniversalClient) settings {
		switch c := c.(type) {
		case *goredis.Client:
			o := c.Options()
			// A client's options read back after go-redis's defaults: -1
			// retries become 0, none.
			return settings{o.ClientName, o.ContextTimeoutEnabled, o.DisableIdentity, o.MaxRetries, o.DialerRetries, o.Protocol, o.ReadBufferSize, o.WriteBufferSize, o.PipelineReadBufferSize, o.PipelineWriteBufferSize}
		case *goredis.ClusterClient:
			o := c.Options()
			retries := o.MaxRetries
			if retries == -1 {
				retries = 0 // what its node clients make of it
			}
			return settings{o.ClientName, o.ContextTimeoutEnabled, o.DisableIdentity, retries, o.DialerRetries, o.Protocol, o.ReadBufferSize, o.WriteBufferSize, o.PipelineReadBufferSize, o.PipelineWriteBufferSize}
		}
		t.Fatalf("client %T", c)
		return settings{}
	}
	for _, o := range []Options{
		{URL: "redis://127.0.0.1:1"},
		{SentinelAddrs: []string{"127.0.0.1:1"}, MasterName: "m"},
		{URL: "redis-cluster://127.0.0.1:1"},
	} {
		c, err := o.NewClient("n")
		if err != nil {
			t.Fatal(err)
		}
		if got := of(c); got != want {
			t.Errorf("%+v: %+v, want %+v", o, got, want)
		}
		_ = c.Close()
	}
	for _, u := range []string{"redis://127.0.0.1:1?protocol=3", "redis-cluster://127.0.0.1:1?protocol=3"} {
		c, err := (Options{URL: u}).NewClient("n")
		if err != nil {
			t.Fatal(err)
		}
		if got := of(c).protocol; got != 3 {
			t.Errorf("%s: protocol %d", u, got)
		}
		_ = c.Close()
	}
}
