package redis

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// pipelineCounter counts what the client sends: pipelines, and commands
// outside pipelines.
type pipelineCounter struct {
	mu        sync.Mutex
	pipelines [][]string
	singles   int
}

func (c *pipelineCounter) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (c *pipelineCounter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		c.mu.Lock()
		c.singles++
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (c *pipelineCounter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		names := make([]string, len(cmds))
		for i, cmd := range cmds {
			names[i] = cmd.Name()
		}
		c.mu.Lock()
		c.pipelines = append(c.pipelines, names)
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestHistoryBroadcastIsOneRoundTrip: a broadcast of a topic with
// history costs one pipelined command, as a PUBLISH does, and Redis runs
// the cached script (no EVAL with the script's text).
func TestHistoryBroadcastIsOneRoundTrip(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, time.Minute, true)
	publishAt(t, a, "room:1", "warm") // Redis caches the script
	count := &pipelineCounter{}
	a.client.AddHook(count)
	rc := inspector(t, srv)
	if err := rc.ConfigResetStat(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		publishAt(t, a, "room:1", strconv.Itoa(i))
	}
	count.mu.Lock()
	pipelines, singles := slices.Clone(count.pipelines), count.singles
	count.mu.Unlock()
	if len(pipelines) != n || singles != 0 {
		t.Fatalf("%d broadcasts sent %d pipelines and %d other commands", n, len(pipelines), singles)
	}
	for _, p := range pipelines {
		if !slices.Equal(p, []string{"evalsha"}) {
			t.Fatalf("pipeline %v, want one evalsha", p)
		}
	}
	stats := rc.Info(context.Background(), "commandstats").Val()
	if !strings.Contains(stats, "cmdstat_evalsha:calls="+strconv.Itoa(n)+",") || strings.Contains(stats, "cmdstat_eval:") {
		t.Fatalf("INFO commandstats:\n%s", stats)
	}
}

// TestHistoryMessageSizeCountsThePosition: the bound MaxMessageSize puts
// on a broadcast leaves room for the position on topics with history.
func TestHistoryMessageSizeCountsThePosition(t *testing.T) {
	srv := startRedis(t)
	a := node(t, srv, "a", func(o *Options) { o.MaxMessageSize = MinMaxMessageSize })
	a.SetHistoryPolicy(roomHistory(10, time.Minute))
	a.SetGate(openGate("a"))
	if d := a.MessageOverhead("room:1", "e") - a.MessageOverhead("lobby1", "e"); d != maxPositionExt {
		t.Fatalf("overhead of a history topic exceeds another's by %d, want %d", d, maxPositionExt)
	}
	// Topics of one length: "lobby1" and "room:1".
	fits := make([]byte, MinMaxMessageSize-a.MessageOverhead("lobby1", "e"))
	ctx := context.Background()
	if err := a.Publish(ctx, &pubsub.Message{Topic: "lobby1", Event: "e", Payload: fits, Binary: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PublishAt(ctx, &pubsub.Message{Topic: "room:1", Event: "e", Payload: fits, Binary: true}); !errors.Is(err, pubsub.ErrTooLarge) {
		t.Fatalf("history topic, payload that fits only without a position: %v", err)
	}
	fits = fits[:MinMaxMessageSize-a.MessageOverhead("room:1", "e")]
	if _, err := a.PublishAt(ctx, &pubsub.Message{Topic: "room:1", Event: "e", Payload: fits, Binary: true}); err != nil {
		t.Fatal(err)
	}
}

// TestHistoryStatsForgetsExpiredTopics: the topics HistoryStats knows are
// swept as they are noted, so a node publishing to ever new topics keeps
// only the live ones, scraped or not.
func TestHistoryStatsForgetsExpiredTopics(t *testing.T) {
	var h historyState
	o := pubsub.HistoryOptions{Size: 3, TTL: time.Second}
	t0 := time.Now()
	for i := range 10000 {
		now := t0.Add(time.Duration(i) * time.Millisecond) // 1000 live at a time
		h.note("room:"+strconv.Itoa(i), pubsub.Position{Epoch: "e", Offset: 5}, o, now)
	}
	h.mu.Lock()
	n := len(h.known)
	h.mu.Unlock()
	if n > 2*1000+64 {
		t.Fatalf("%d topics known, with 1000 live", n)
	}
	// Positions are noted in the order Redis gave them: one that goes
	// back is the newest all the same, and marks its epoch lost.
	h.note("room:0", pubsub.Position{Epoch: "e", Offset: 9}, o, t0)
	if prev, ok := h.note("room:0", pubsub.Position{Epoch: "e", Offset: 7}, o, t0); !ok || prev.top != 9 {
		t.Fatalf("note of 7 after 9 returned %+v, %v", prev, ok)
	}
	if k := h.known["room:0"]; k.top != 7 || k.lost != "e" {
		t.Fatalf("after offsets 9 then 7 of one epoch: %+v", k)
	}
	h.note("room:0", pubsub.Position{Epoch: "e", Offset: 8}, o, t0)
	if k := h.known["room:0"]; k.lost != "e" {
		t.Fatalf("the lost epoch forgotten while positions still come in it: %+v", k)
	}
	h.note("room:0", pubsub.Position{Epoch: "f", Offset: 1}, o, t0)
	if k := h.known["room:0"]; k.lost != "" || k.top != 1 {
		t.Fatalf("after a new epoch: %+v", k)
	}
}
