package node

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
	"github.com/channelsd/channelsd/pubsub/redis"
	"github.com/channelsd/channelsd/test/redistest"
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
	n := startListening(t, Config{Router: echoRouter(), ReportInterval: 2 * time.Second})

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

	fams, _ = scrape(t, n.Handler())
	for name, want := range map[string]float64{
		"channelsd_channels":                 1,
		"channelsd_joins_total":              1,
		"channelsd_messages_in_total":        2, // join, push
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

	// A message that does not decode closes the socket (1007) and is
	// counted; the gauges come back to zero.
	if err := c.SendRaw([]byte("not a phoenix message"), false); err != nil {
		t.Fatal(err)
	}
	if st, err := c.AwaitClose(ctx); err != nil || st.Code != channels.CloseInvalidData {
		t.Fatalf("after garbage: %v %v, want close 1007", st, err)
	}
	fams, _ = scrape(t, n.Handler())
	for name, want := range map[string]float64{
		"channelsd_messages_in_total":      3, // join, push, garbage
		"channelsd_malformed_frames_total": 1,
	} {
		if got := value(fams, name); got != want {
			t.Errorf("after garbage: %s = %v, want %v", name, got, want)
		}
	}
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

	local := newTestNode(t, Config{})
	scrape(t, local.Handler()) // no key configured: local clients
	if code, _ := do(t, local.Handler(), "GET", "/metrics", "", ":remote", "10.1.2.3:40000", ":host", "10.0.0.5:4000"); code != http.StatusForbidden {
		t.Fatalf("no key, remote scrape: status %d, want 403", code)
	}
	// MetricsPublic opens /metrics alone, key or not, for a Prometheus
	// scraping from other hosts.
	for _, key := range []string{"", "s3cret"} {
		public := newTestNode(t, Config{APIKey: key, MetricsPublic: true})
		scrape(t, public.Handler(), ":remote", "10.1.2.3:40000", ":host", "10.0.0.5:4000")
		if code, _ := do(t, public.Handler(), "POST", "/api/drain", "{}", ":remote", "10.1.2.3:40000", ":host", "10.0.0.5:4000"); code == http.StatusAccepted {
			t.Fatalf("MetricsPublic (key %q) opened the API", key)
		}
	}
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
		Reconnects: 4, Subscriptions: 5, Connected: true, PublishRedirects: 6,
		PublishWriters: 2, PublishQueues: map[string]int{"10.0.0.1:6379": 3, "10.0.0.2:6379": 0},
	}}
	n := newTestNode(t, Config{PubSub: ps})
	fams, _ := scrape(t, n.Handler())
	for master, want := range map[string]float64{"10.0.0.1:6379": 3, "10.0.0.2:6379": 0} {
		if got := value(fams, "channelsd_redis_publish_queue", "master", master); got != want {
			t.Errorf("channelsd_redis_publish_queue{master=%q} = %v, want %v", master, got, want)
		}
	}
	if f := fams["channelsd_redis_publish_queue"]; len(f.GetMetric()) != 2 || f.GetHelp() == "" {
		t.Errorf("channelsd_redis_publish_queue: %d series, HELP %q; want one per writer, and a HELP", len(f.GetMetric()), f.GetHelp())
	}
	for name, want := range map[string]float64{
		"channelsd_redis_publish_redirects_total": 6,
		"channelsd_redis_publish_writers":         2,
		"channelsd_redis_published_total":         7,
		"channelsd_redis_publish_errors_total":    2,
		"channelsd_redis_dropped_total":           1,
		"channelsd_redis_received_total":          11,
		"channelsd_redis_decode_errors_total":     3,
		"channelsd_redis_reconnects_total":        4,
		"channelsd_redis_subscriptions":           5,
		"channelsd_redis_connected":               1,
	} {
		if got := value(fams, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
		if fams[name].GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}
}

// histCount returns the sample count of histogram name, or -1 when it is
// not exposed.
func histCount(fams map[string]*dto.MetricFamily, name string) float64 {
	f, ok := fams[name]
	if !ok || len(f.GetMetric()) != 1 || f.GetMetric()[0].Histogram == nil {
		return -1
	}
	return float64(f.GetMetric()[0].Histogram.GetSampleCount())
}

// waitMetric scrapes until get returns want, failing after 5s.
func waitMetric(t *testing.T, h http.Handler, what string, want float64, get func(map[string]*dto.MetricFamily) float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fams, _ := scrape(t, h)
		got := get(fams)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", what, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMetricsFanoutHistogramAndMessagesOut(t *testing.T) {
	ps := local.New()
	n := startListening(t, Config{Router: echoRouter(), PubSub: ps, ReportInterval: 2 * time.Second})
	h := n.Handler()

	fams, body := scrape(t, h)
	for _, name := range []string{"channelsd_broadcast_fanout_seconds", "channelsd_messages_out_total"} {
		if !strings.Contains(body, "# HELP "+name+" ") {
			t.Fatalf("no HELP line for %s", name)
		}
	}
	if _, ok := fams["channelsd_cross_node_latency_seconds"]; ok {
		t.Fatal("cross-node latency exposed without a Redis PubSub")
	}
	if got := value(fams, "channelsd_messages_out_total"); got != 0 {
		t.Fatalf("messages out before traffic = %v", got)
	}
	fanout0 := histCount(fams, "channelsd_broadcast_fanout_seconds")
	if fanout0 < 0 {
		t.Fatal("channelsd_broadcast_fanout_seconds is not a histogram")
	}
	messagesOut := func(f map[string]*dto.MetricFamily) float64 { return value(f, "channelsd_messages_out_total") }

	// WebSocket: the join reply and k broadcasts are k+1 frames.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if reply, err := c.Join(ctx, "room:1", nil); err != nil || reply.Status != "ok" {
		t.Fatalf("join: %v %v", reply, err)
	}
	waitMetric(t, h, "messages out after the join reply", 1, messagesOut)
	const k = 5
	for i := range k {
		if err := ps.Publish(ctx, &pubsub.Message{Topic: "room:1", Event: "new_msg", Payload: []byte(`{"i":` + strconv.Itoa(i) + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	for range k {
		if _, err := c.Await(ctx, wsclient.IsEvent("room:1", "new_msg")); err != nil {
			t.Fatal(err)
		}
	}
	waitMetric(t, h, "messages out after the broadcasts", 1+k, messagesOut)
	fams, _ = scrape(t, h)
	if got := histCount(fams, "channelsd_broadcast_fanout_seconds"); got < fanout0+k {
		t.Fatalf("fan-out observations = %v, want at least %v (one per broadcast)", got, fanout0+k)
	}

	// Long-poll: the messages handed out in poll responses.
	lp := "/socket/longpoll?vsn=2.0.0"
	code, resp := do(t, h, "GET", lp, "")
	var open struct {
		Status   int
		Token    string
		Messages []string
	}
	if err := json.Unmarshal([]byte(resp), &open); code != 200 || err != nil || open.Status != 410 {
		t.Fatalf("long-poll open: %d %s %v", code, resp, err)
	}
	tok := lp + "&token=" + url.QueryEscape(open.Token)
	if code, resp := do(t, h, "POST", tok, `["1","1","room:1","phx_join",{}]`); code != 200 || !strings.Contains(resp, `"status":200`) {
		t.Fatalf("long-poll join: %d %s", code, resp)
	}
	for i := range 2 {
		_ = ps.Publish(ctx, &pubsub.Message{Topic: "room:1", Event: "lp_msg", Payload: []byte(`{"i":` + strconv.Itoa(i) + `}`)})
	}
	// 1 join reply + 2 broadcasts, in one or more polls.
	received := 0
	for received < 3 {
		code, resp := do(t, h, "GET", tok, "")
		var poll struct {
			Status   int
			Messages []string
		}
		if err := json.Unmarshal([]byte(resp), &poll); code != 200 || err != nil || poll.Status != 200 {
			t.Fatalf("long-poll poll: %d %s %v", code, resp, err)
		}
		received += len(poll.Messages)
	}
	if received != 3 {
		t.Fatalf("long-poll received %d messages, want 3", received)
	}
	// The WebSocket client got the two lp_msg broadcasts too.
	waitMetric(t, h, "messages out over both transports", float64(1+k+2+received), messagesOut)
	time.Sleep(20 * time.Millisecond)
	if fams, _ := scrape(t, h); messagesOut(fams) != float64(1+k+2+received) {
		t.Fatalf("messages out moved without traffic: %v", messagesOut(fams))
	}
}

func TestMetricsPresenceEntries(t *testing.T) {
	ps := local.New()
	tr := presence.NewLocal(ps)
	n := newTestNode(t, Config{PubSub: ps, Presence: tr})
	entries := func() float64 {
		fams, _ := scrape(t, n.Handler())
		return value(fams, "channelsd_presence_entries")
	}
	if got := entries(); got != 0 {
		t.Fatalf("presence entries before any track = %v, want 0", got)
	}
	ctx := context.Background()
	for _, o := range []struct{ topic, owner, key string }{{"room:1", "a", "ann"}, {"room:1", "b", "ann"}, {"room:2", "a", "bob"}} {
		if _, err := tr.Track(ctx, o.topic, o.owner, o.key, json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if got := entries(); got != 3 {
		t.Fatalf("after 3 tracks: %v, want 3", got)
	}
	if err := tr.Untrack(ctx, "room:1", "b", "ann"); err != nil {
		t.Fatal(err)
	}
	if got := entries(); got != 2 {
		t.Fatalf("after an untrack: %v, want 2", got)
	}
	if err := tr.UntrackAll(ctx, "room:2", "a"); err != nil {
		t.Fatal(err)
	}
	if got := entries(); got != 1 {
		t.Fatalf("after UntrackAll: %v, want 1", got)
	}
}

// TestMetricsPresenceLimitHits: a refusal counted by the presence tracker
// shows in the node's channelsd_limit_hits_total under its own label.
func TestMetricsPresenceLimitHits(t *testing.T) {
	ps := local.New()
	tr := presence.NewLocal(ps)
	n := newTestNode(t, Config{PubSub: ps, Presence: tr})
	long := strings.Repeat("k", presence.DefaultMaxKeyLength+1)
	if _, err := tr.Track(context.Background(), "room:1", "a", long, json.RawMessage(`{}`)); err == nil {
		t.Fatal("a key over the limit was tracked")
	}
	fams, _ := scrape(t, n.Handler())
	if got := value(fams, "channelsd_limit_hits_total", "limit", "presence_key_length"); got != 1 {
		t.Fatalf(`limit_hits{limit="presence_key_length"} = %v, want 1`, got)
	}
}

// TestMetricsCrossNodeLatency runs two in-process nodes on one Redis: a
// broadcast published on a shows in b's cross-node histogram (and in both
// nodes' fan-out histograms), not in a's. (pubsub/redis's tests check
// the exact counts, without a node's own background broadcasts.)
func TestMetricsCrossNodeLatency(t *testing.T) {
	srv := redistest.Start(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	newNode := func(id string) (*Node, *redis.PubSub) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ps, err := redis.New(ctx, redis.Options{URL: srv.URL(), NodeID: id, Prefix: "metrics", Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		return startListening(t, Config{Router: echoRouter(), PubSub: ps, ReportInterval: 2 * time.Second}), ps
	}
	a, psA := newNode("a")
	b, _ := newNode("b")

	for _, n := range []*Node{a, b} {
		fams, body := scrape(t, n.Handler())
		if !strings.Contains(body, "# HELP channelsd_cross_node_latency_seconds ") {
			t.Fatal("no HELP line for channelsd_cross_node_latency_seconds")
		}
		if got := histCount(fams, "channelsd_cross_node_latency_seconds"); got < 0 {
			t.Fatal("channelsd_cross_node_latency_seconds is not a histogram")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Sockets on both nodes, so that both dispatch.
	var clients []*wsclient.Client
	for _, n := range []*Node{a, b} {
		c, err := wsclient.Dial(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if reply, err := c.Join(ctx, "room:1", nil); err != nil || reply.Status != "ok" {
			t.Fatalf("join: %v %v", reply, err)
		}
		clients = append(clients, c)
	}
	fanout := func(n *Node) float64 {
		fams, _ := scrape(t, n.Handler())
		return histCount(fams, "channelsd_broadcast_fanout_seconds")
	}
	fanA0, fanB0 := fanout(a), fanout(b)
	// The nodes' own periodic reports (cluster view) cross too.
	famsB0, _ := scrape(t, b.Handler())
	crossB0 := histCount(famsB0, "channelsd_cross_node_latency_seconds")

	const k = 4
	start := time.Now()
	for i := range k {
		if err := psA.Publish(ctx, &pubsub.Message{Topic: "room:1", Event: "new_msg", Payload: []byte(`{"i":` + strconv.Itoa(i) + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clients {
		for range k {
			if _, err := c.Await(ctx, wsclient.IsEvent("room:1", "new_msg")); err != nil {
				t.Fatal(err)
			}
		}
	}
	elapsed := time.Since(start)

	famsB, _ := scrape(t, b.Handler())
	if got := histCount(famsB, "channelsd_cross_node_latency_seconds"); got < crossB0+k {
		t.Fatalf("b's cross-node observations = %v, want at least %v", got, crossB0+k)
	}
	// Same host, one clock: every latency is within the test's time (the
	// node's own periodic broadcasts may add a few samples, all quick).
	hb := famsB["channelsd_cross_node_latency_seconds"].GetMetric()[0].GetHistogram()
	if sum := hb.GetSampleSum(); sum < 0 || sum > float64(hb.GetSampleCount())*(elapsed.Seconds()+1) {
		t.Fatalf("b's cross-node latency sum %vs for %d broadcasts that arrived within %v", sum, hb.GetSampleCount(), elapsed)
	}
	// a's own broadcasts are not cross-node for a: whatever a counts
	// comes from b, which published none of the k.
	famsA, _ := scrape(t, a.Handler())
	if got := histCount(famsA, "channelsd_cross_node_latency_seconds"); got >= k && got >= histCount(famsB, "channelsd_cross_node_latency_seconds") {
		t.Fatalf("a observed %v cross-node latencies, as many as b: its own broadcasts were counted", got)
	}
	if got := fanout(a); got < fanA0+k {
		t.Fatalf("a's fan-out observations = %v, want at least %v", got, fanA0+k)
	}
	if got := fanout(b); got < fanB0+k {
		t.Fatalf("b's fan-out observations = %v, want at least %v", got, fanB0+k)
	}
}

// echoRouter routes room:* to echoChannel.
func echoRouter() *channels.Router {
	r := &channels.Router{}
	r.Handle("room:*", func(string) channels.Channel { return echoChannel{} })
	return r
}

// TestMetricsServeConfigCollectors: an application's collectors
// (Config.Collectors, such as channels/proxy's Metrics) are served with
// the node's own.
func TestMetricsServeConfigCollectors(t *testing.T) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_things_total", Help: "Things."})
	c.Add(3)
	n := newTestNode(t, Config{Collectors: []prometheus.Collector{c}})
	fams, _ := scrape(t, n.Handler())
	if got := value(fams, "app_things_total"); got != 3 {
		t.Fatalf("app_things_total = %v, want 3", got)
	}
	if got := value(fams, "channelsd_channels"); got != 0 {
		t.Fatalf("channelsd_channels = %v beside an application's collector, want 0", got)
	}
}
