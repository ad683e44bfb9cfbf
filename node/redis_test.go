package node

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	presenceredis "github.com/channelsd/channelsd/presence/redis"
	"github.com/channelsd/channelsd/pubsub/local"
	pubsubredis "github.com/channelsd/channelsd/pubsub/redis"
	"github.com/channelsd/channelsd/test/redistest"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// roomChannel tracks the joining user ({"user": ...} join params) once the
// join is acknowledged, as Phoenix applications track in after_join.
type roomChannel struct{ user string }

func (c *roomChannel) Join(_ *channels.ChannelSocket, p channels.Payload) (any, error) {
	var params struct{ User string }
	if err := p.Decode(&params); err != nil || params.User == "" {
		return nil, errors.New("user required")
	}
	c.user = params.User
	return nil, nil
}

func (c *roomChannel) AfterJoin(s *channels.ChannelSocket) {
	_ = s.Track(c.user, map[string]any{"device": "test"})
}

// HandleIn answers "who" with the room's presences.
func (c *roomChannel) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	if in.Event == "who" {
		state, err := s.ListPresence()
		if err != nil {
			return channels.ErrorReply(map[string]string{"reason": err.Error()})
		}
		return channels.Ok(state)
	}
	return channels.Ok(nil)
}

func (c *roomChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

func roomRouter() *channels.Router {
	r := &channels.Router{}
	r.Handle("room:*", func(string) channels.Channel { return &roomChannel{} })
	return r
}

// userSockets names each socket after its "user" connect parameter, so
// that Endpoint.Disconnect reaches it by id.
var userSockets = channels.SocketHandlerFunc(func(_ context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
	return channels.Identity{ID: "user:" + info.Params["user"]}, nil
})

// TestRedisWiresTheClusterInOneSetting runs two nodes given only
// Config.Redis: presence tracked on one is listed on the other through
// Node.Presence, a broadcast from one reaches the other's sockets, a
// disconnect by id crosses nodes through one pattern subscription per
// node (no SUBSCRIBE per socket), and the node ids agree.
func TestRedisWiresTheClusterInOneSetting(t *testing.T) {
	srv := redistest.Start(t)
	cfg := Config{Redis: srv.URL(), RedisOptions: RedisOptions{Prefix: "wiring"}, Router: roomRouter(), SocketHandler: userSockets}
	cfgA, cfgB := cfg, cfg
	cfgA.NodeID, cfgB.NodeID = "node-a", "node-b"
	a, b := startListening(t, cfgA), startListening(t, cfgB)

	for _, n := range []*Node{a, b} {
		ps, ok := n.cfg.PubSub.(*pubsubredis.PubSub)
		if !ok {
			t.Fatalf("PubSub is %T, want *pubsub/redis.PubSub", n.cfg.PubSub)
		}
		if _, ok := n.Presence().(*presenceredis.Tracker); !ok {
			t.Fatalf("Presence() is %T, want *presence/redis.Tracker", n.Presence())
		}
		if ps.NodeID() != n.cfg.NodeID {
			t.Fatalf("PubSub node id %q, node's %q", ps.NodeID(), n.cfg.NodeID)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialUser := func(n *Node, user string) *wsclient.Client {
		c, err := wsclient.Dial(ctx, wsURL(n), wsclient.Options{Params: map[string]string{"user": user}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if reply, err := c.Join(ctx, "room:1", map[string]string{"user": user}); err != nil || reply.Status != "ok" {
			t.Fatalf("join on %s: %v %v", n.cfg.NodeID, reply, err)
		}
		return c
	}
	bob := dialUser(b, "bob")
	alice := dialUser(a, "alice")

	// bob, on b, hears of alice's join on a: the diff crossed Redis.
	if _, err := bob.Await(ctx, func(m wsclient.Message) bool {
		return m.Event == "presence_diff" && strings.Contains(string(m.Payload), `"alice"`)
	}); err != nil {
		t.Fatal(err)
	}
	// Each node writes its entries to Redis after a short coalescing
	// delay of its own, so b's write of bob may still be on its way when
	// a's diff of alice arrives: the lists converge, and are polled until
	// they have (bounded by ctx).
	for _, n := range []*Node{a, b} {
		for {
			state, err := n.Presence().List(ctx, "room:1")
			if err != nil {
				t.Fatalf("%s lists: %v", n.cfg.NodeID, err)
			}
			if len(state["alice"].Metas) == 1 && len(state["bob"].Metas) == 1 {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s lists %v, want alice and bob once each", n.cfg.NodeID, state)
			case <-time.After(20 * time.Millisecond): // polling a converging list
			}
		}
	}

	// A channel on b lists the same, for its client.
	ref, err := bob.Push("room:1", "who", nil)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := bob.AwaitReply(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	var who presence.State
	if err := json.Unmarshal(reply.Payload, &who); err != nil || reply.Status != "ok" || len(who["alice"].Metas) != 1 || len(who["bob"].Metas) != 1 {
		t.Fatalf("who: %s (%v), want alice and bob once each", reply.Raw, err)
	}

	if err := b.Endpoint().Broadcast(ctx, "room:1", "news", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Await(ctx, wsclient.IsEvent("room:1", "news")); err != nil {
		t.Fatal(err)
	}

	rc := goredis.NewClient(&goredis.Options{Addr: srv.Addr()})
	defer rc.Close()
	clients, err := rc.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(clients, " psub=1 "); n != 2 {
		t.Fatalf("%d clients with one pattern subscription, want one per node:\n%s", n, clients)
	}
	if chans, err := rc.PubSubChannels(ctx, "wiring:t:"+channels.SocketIDTopicPrefix+"*").Result(); err != nil || len(chans) != 0 {
		t.Fatalf("socket id channels subscribed one by one: %v, %v", chans, err)
	}
	if err := b.Endpoint().Disconnect(ctx, "user:alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.AwaitClose(ctx); err != nil {
		t.Fatal(err)
	}
}

// logEvents calls on for every record whose message contains substr.
type logEvents struct {
	slog.Handler
	substr string
	on     func()
}

func (h logEvents) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.substr) {
		h.on()
	}
	return nil
}

func (h logEvents) Enabled(context.Context, slog.Level) bool { return true }
func (h logEvents) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h logEvents) WithGroup(string) slog.Handler            { return h }

// retryLogger returns a logger that closes the returned channel on the
// first "retrying" warning.
func retryLogger() (*slog.Logger, <-chan struct{}) {
	retrying := make(chan struct{})
	var once sync.Once
	h := logEvents{Handler: slog.DiscardHandler, substr: "not reachable yet", on: func() { once.Do(func() { close(retrying) }) }}
	return slog.New(h), retrying
}

// TestRedisWaitsForALateRedis starts a node before its Redis, as a
// rollout does: New retries until Redis answers, then the node works.
func TestRedisWaitsForALateRedis(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	logger, retrying := retryLogger()
	type result struct {
		n   *Node
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := New(Config{Addr: "127.0.0.1:0", Redis: srv.URL(), Router: roomRouter(), Logger: logger,
			RedisOptions: RedisOptions{ConnectTimeout: 20 * time.Second}})
		done <- result{n, err}
	}()
	select {
	case <-retrying:
	case r := <-done:
		t.Fatalf("New returned before Redis was up: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("no retry logged")
	}
	srv.Start()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.n.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.n.Presence().Track(ctx, "room:1", "owner", "alice", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if state, err := r.n.Presence().List(ctx, "room:1"); err != nil || len(state["alice"].Metas) != 1 {
		t.Fatalf("List = %v, %v", state, err)
	}
}

// TestRedisGivesUp: the wait for Redis ends with the context, with
// ConnectTimeout, or at once when ConnectTimeout is negative.
func TestRedisGivesUp(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	cfg := Config{Addr: "127.0.0.1:0", Redis: srv.URL(), Router: roomRouter()}

	t.Run("context", func(t *testing.T) {
		logger, retrying := retryLogger()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-retrying
			cancel()
		}()
		c := cfg
		c.Logger = logger
		start := time.Now()
		_, err := NewWithContext(ctx, c)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("took %v after the cancel", time.Since(start))
		}
	})
	t.Run("timeout", func(t *testing.T) {
		c := cfg
		c.Logger = slog.New(slog.DiscardHandler)
		c.RedisOptions.ConnectTimeout = 500 * time.Millisecond
		start := time.Now()
		_, err := New(c)
		if err == nil || !strings.Contains(err.Error(), "redis unreachable for 500ms") {
			t.Fatalf("err = %v", err)
		}
		if took := time.Since(start); took < 500*time.Millisecond || took > 10*time.Second {
			t.Fatalf("gave up after %v, want about 500ms", took)
		}
	})
	t.Run("one attempt", func(t *testing.T) {
		logger, retrying := retryLogger()
		c := cfg
		c.Logger = logger
		c.RedisOptions.ConnectTimeout = -1
		if _, err := New(c); err == nil {
			t.Fatal("New succeeded without Redis")
		}
		select {
		case <-retrying:
			t.Fatal("retried with a negative ConnectTimeout")
		default:
		}
	})
}

// TestRedisSettingsCheckedBeforeConnecting: a wrong setting fails at once,
// not after the wait for Redis (the address below never answers).
func TestRedisSettingsCheckedBeforeConnecting(t *testing.T) {
	const unreachable = "redis://127.0.0.1:1"
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"pubsub too", Config{Redis: unreachable, PubSub: local.New()}, "either Redis or PubSub"},
		{"presence too", Config{Redis: unreachable, Presence: presence.NewLocal(local.New())}, "either Redis or PubSub"},
		{"bad address", Config{Redis: "http://x"}, "unknown scheme"},
		{"message below frame", Config{Redis: unreachable, MaxFrameSize: 2 << 20}, "MaxMessageSize"},
		{"message below least", Config{Redis: unreachable, RedisOptions: RedisOptions{MaxMessageSize: 1000}}, "MaxMessageSize"},
		{"negative", Config{Redis: unreachable, RedisOptions: RedisOptions{PresenceHeartbeat: -time.Second}}, "negative"},
		{"limits for a given tracker", Config{Presence: presence.NewLocal(local.New()), PresenceLimits: presence.Limits{MaxKeyLength: 4}}, "PresenceLimits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Router = roomRouter()
			tc.cfg.RedisOptions.ConnectTimeout = time.Minute // a wait would show
			start := time.Now()
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("failed after %v: it waited for Redis", took)
			}
		})
	}
}

// TestPresenceLimitsApplyToTheNodesTracker: the in-memory tracker the
// node builds takes Config.PresenceLimits.
func TestPresenceLimitsApplyToTheNodesTracker(t *testing.T) {
	n, err := New(Config{Router: roomRouter(), PresenceLimits: presence.Limits{MaxKeyLength: 4}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(context.Background())
	ctx := context.Background()
	if _, err := n.Presence().Track(ctx, "room:1", "o", "alice", []byte(`{}`)); !errors.Is(err, presence.ErrKeyTooLong) {
		t.Fatalf("Track of a 5-byte key under MaxKeyLength 4: %v, want ErrKeyTooLong", err)
	}
	if _, err := n.Presence().Track(ctx, "room:1", "o", "bob", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
}

// TestClusterURLAtOneRedis: a redis-cluster:// URL naming a Redis without
// cluster support fails New at once, saying so, instead of waiting out
// ConnectTimeout for a cluster that will never answer.
func TestClusterURLAtOneRedis(t *testing.T) {
	srv := redistest.Start(t)
	start := time.Now()
	_, err := New(Config{Router: roomRouter(), Redis: "redis-cluster://" + srv.Addr(), Logger: slog.New(slog.DiscardHandler),
		RedisOptions: RedisOptions{ConnectTimeout: time.Minute}})
	if !errors.Is(err, pubsubredis.ErrNotCluster) || !strings.Contains(err.Error(), "cluster support disabled") {
		t.Fatalf("err = %v, want ErrNotCluster quoting Redis's answer", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("failed after %v: it waited for Redis", took)
	}
	t.Logf("error: %v", err)
}

// TestRedisWrongPassword: a Redis that refuses the URL's user or password
// fails New at once, saying so, instead of waiting out ConnectTimeout as
// for a Redis that does not answer.
func TestRedisWrongPassword(t *testing.T) {
	srv := redistest.Start(t)
	start := time.Now()
	_, err := New(Config{Router: roomRouter(), Redis: "redis://nobody:not-the-password@" + srv.Addr(), Logger: slog.New(slog.DiscardHandler),
		RedisOptions: RedisOptions{ConnectTimeout: time.Minute}})
	if err == nil || !strings.Contains(err.Error(), "refused the user or password") || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("err = %v, want the refusal, quoting Redis's answer", err)
	}
	if strings.Contains(err.Error(), "not-the-password") {
		t.Errorf("the error shows the password: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("failed after %v: it waited for Redis", took)
	}
	t.Logf("error: %v", err)
}
