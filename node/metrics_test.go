package node

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub/local"
	"github.com/channelsd/channelsd/pubsub/redis"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// echoChannel accepts every join and answers every push with ok.
type echoChannel struct{}

func (echoChannel) Join(*channels.ChannelSocket, channels.Payload) (any, error) { return nil, nil }
func (echoChannel) HandleIn(_ *channels.ChannelSocket, in channels.In) channels.Result {
	return channels.Ok(nil)
}
func (echoChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

// scrape GETs /metrics and parses it, failing on any status but 200.
func scrape(t *testing.T, h http.Handler, header ...string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	code, body := do(t, h, "GET", "/metrics", "", header...)
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d: %s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not valid exposition format: %v\n%s", err, body)
	}
	return fams, body
}

// value returns the value of the metric name whose labels include want
// (label pairs), or -1 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if labels[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return -1
}

func TestMetricsCountRealTraffic(t *testing.T) {
	r := &channels.Router{}
	r.Handle("room:*", func(string) channels.Channel { return echoChannel{} })
	n, err := New(Config{
		Addr:   "127.0.0.1:0",
		Router: r,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Shutdown(context.Background()) })

	fams, body := scrape(t, n.Handler())
	for name, want := range map[string]float64{
		"channelsd_channels":                0,
		"channelsd_joins_total":             0,
		"channelsd_messages_in_total":       0,
		"channelsd_draining":                0,
		"channelsd_websocket_refused_total": 0,
	} {
		if got := value(fams, name); got != want {
			t.Errorf("before traffic: %s = %v, want %v", name, got, want)
		}
	}
	if got := value(fams, "channelsd_sockets", "transport", "websocket"); got != 0 {
		t.Errorf("before traffic: websocket sockets = %v", got)
	}
	for _, name := range []string{"channelsd_joins_total", "channelsd_sockets", "channelsd_websocket_closes_total", "channelsd_longpoll_polls_total", "go_goroutines", "process_start_time_seconds"} {
		if !strings.Contains(body, "# HELP "+name+" ") {
			t.Errorf("no HELP line for %s", name)
		}
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP text", name)
		}
		if strings.HasPrefix(name, "channelsd_redis_") {
			t.Errorf("%s exposed without a Redis PubSub", name)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if reply, err := c.Join(ctx, "room:1", nil); err != nil || reply.Status != "ok" {
		t.Fatalf("join: %v %v", reply, err)
	}
	ref, err := c.Push("room:1", "hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AwaitReply(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if err := c.SendRaw([]byte("not a phoenix message"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Await(ctx, wsclient.IsEvent(channels.TopicPhoenix, channels.EventReply)); err != nil {
		t.Fatal(err)
	}

	fams, _ = scrape(t, n.Handler())
	for name, want := range map[string]float64{
		"channelsd_channels":                 1,
		"channelsd_joins_total":              1,
		"channelsd_messages_in_total":        3, // join, push, garbage
		"channelsd_malformed_frames_total":   1,
		"channelsd_websocket_upgrades_total": 1,
	} {
		if got := value(fams, name); got != want {
			t.Errorf("after traffic: %s = %v, want %v", name, got, want)
		}
	}
	if got := value(fams, "channelsd_sockets", "transport", "websocket"); got != 1 {
		t.Errorf("after traffic: websocket sockets = %v, want 1", got)
	}
	if got := value(fams, "channelsd_sockets", "transport", "longpoll"); got != 0 {
		t.Errorf("after traffic: longpoll sockets = %v, want 0", got)
	}

	// Refused handshake (bad vsn).
	if _, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{Vsn: "9.9.9"}); err == nil {
		t.Fatal("a bad vsn was accepted")
	}
	fams, _ = scrape(t, n.Handler())
	if got := value(fams, "channelsd_websocket_refused_total"); got != 1 {
		t.Errorf("channelsd_websocket_refused_total = %v, want 1", got)
	}

	// Closing the client brings the gauges back to zero.
	_ = c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fams, _ = scrape(t, n.Handler())
		if value(fams, "channelsd_sockets", "transport", "websocket") == 0 && value(fams, "channelsd_channels") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gauges did not return to 0: sockets %v channels %v",
				value(fams, "channelsd_sockets", "transport", "websocket"), value(fams, "channelsd_channels"))
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Draining shows once shutdown begins; /metrics is still served
	// through the handler.
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	fams, _ = scrape(t, n.Handler())
	if got := value(fams, "channelsd_draining"); got != 1 {
		t.Errorf("after Shutdown: channelsd_draining = %v, want 1", got)
	}
}

func TestMetricsRequireTheAPIKey(t *testing.T) {
	n := newTestNode(t, Config{APIKey: "s3cret"})
	if code, _ := do(t, n.Handler(), "GET", "/metrics", ""); code != http.StatusUnauthorized {
		t.Fatalf("no key: status %d, want 401", code)
	}
	if code, _ := do(t, n.Handler(), "GET", "/metrics", "", "Authorization", "Bearer wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong key: status %d, want 401", code)
	}
	fams, _ := scrape(t, n.Handler(), "Authorization", "Bearer s3cret")
	if _, ok := fams["channelsd_joins_total"]; !ok {
		t.Fatal("channelsd_joins_total missing with the right key")
	}

	open := newTestNode(t, Config{})
	scrape(t, open.Handler()) // no key configured: open
}

// fakeRedis is a local PubSub reporting Redis counters, standing in for
// *redis.PubSub (which needs a server).
type fakeRedis struct {
	*local.PubSub
	stats redis.Stats
}

func (f fakeRedis) Stats() redis.Stats { return f.stats }

func TestMetricsExposeRedisStats(t *testing.T) {
	ps := fakeRedis{PubSub: local.New(), stats: redis.Stats{
		Published: 7, PublishErrors: 2, Dropped: 1, Received: 11, DecodeErrors: 3,
		Reconnects: 4, Subscriptions: 5, Connected: true,
	}}
	n := newTestNode(t, Config{PubSub: ps})
	fams, _ := scrape(t, n.Handler())
	for name, want := range map[string]float64{
		"channelsd_redis_published_total":      7,
		"channelsd_redis_publish_errors_total": 2,
		"channelsd_redis_dropped_total":        1,
		"channelsd_redis_received_total":       11,
		"channelsd_redis_decode_errors_total":  3,
		"channelsd_redis_reconnects_total":     4,
		"channelsd_redis_subscriptions":        5,
		"channelsd_redis_connected":            1,
	} {
		if got := value(fams, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
		if fams[name].GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}
}
