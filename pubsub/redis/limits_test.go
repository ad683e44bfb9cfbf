package redis

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// A broadcast above MaxMessageSize reaches nobody, not even this node's
// subscribers, and its publisher gets pubsub.ErrTooLarge: sent, it could
// make Redis close every receiving node's connection (its pub/sub output
// buffer limit) and lose all they had queued.
func TestPublishAboveMaxMessageSizeIsRefused(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	ra, rb := &recorder{id: "ra"}, &recorder{id: "rb"}
	mustSubscribe(t, a, "room:1", ra)
	mustSubscribe(t, b, "room:1", rb)
	syncAll(t, a, b)

	big := []byte(`{"x":"` + strings.Repeat("a", DefaultMaxMessageSize) + `"}`)
	err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "big", Payload: big})
	if !errors.Is(err, pubsub.ErrTooLarge) {
		t.Fatalf("Publish of %d bytes = %v, want pubsub.ErrTooLarge", len(big), err)
	}
	// Just under the bound goes everywhere.
	fits := DefaultMaxMessageSize - a.MessageOverhead("room:1", "fits")
	payload := []byte(`"` + strings.Repeat("b", fits-2) + `"`)
	if err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "fits", Payload: payload}); err != nil {
		t.Fatalf("Publish of %d bytes (the most that fits): %v", len(payload), err)
	}
	rb.waitCount(t, 1)
	for name, r := range map[string]*recorder{"local": ra, "remote": rb} {
		if got := r.events(); !slices.Equal(got, []string{"fits"}) {
			t.Errorf("%s subscriber got %v, want [fits]", name, got)
		}
	}
	if got := a.LimitHits()["redis_message_size"](); got != 1 {
		t.Errorf("limit hits = %d, want 1", got)
	}
	if s := a.Stats(); s.TooLarge != 1 || s.PublishErrors != 0 {
		t.Errorf("stats %+v, want TooLarge 1 and no publish error", s)
	}
}

func TestMaxMessageSizeOption(t *testing.T) {
	srv := startRedis(t)
	a := node(t, srv, "a", func(o *Options) { o.MaxMessageSize = MinMaxMessageSize })
	if got := a.MaxMessageSize(); got != MinMaxMessageSize {
		t.Fatalf("MaxMessageSize() = %d", got)
	}
	err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "e", Payload: bytes.Repeat([]byte("1"), MinMaxMessageSize)})
	if !errors.Is(err, pubsub.ErrTooLarge) {
		t.Fatalf("Publish = %v, want pubsub.ErrTooLarge", err)
	}
	for _, bad := range []int{-1, 1, MinMaxMessageSize - 1} {
		_, err := (Options{URL: srv.URL(), MaxMessageSize: bad}).withDefaults()
		if err == nil {
			t.Errorf("MaxMessageSize %d accepted", bad)
		}
	}
}

// A node-to-node call whose request, or whose answer, is above
// MaxMessageSize fails with pubsub.ErrTooLarge at once (not at the
// caller's deadline), and nothing that large is published.
func TestCallsAboveMaxMessageSizeFailClearly(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	b.HandleCalls("grow", func(_ context.Context, req []byte) []byte {
		return bytes.Repeat(req, 1024) // 4 KiB asked: 4 MiB answered
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.Call(ctx, "b", "grow", make([]byte, DefaultMaxMessageSize)); !errors.Is(err, pubsub.ErrTooLarge) {
		t.Fatalf("call with a request of %d bytes = %v, want pubsub.ErrTooLarge", DefaultMaxMessageSize, err)
	}
	// Until a announces that it reads replyTooLarge, b answers with a
	// rejection, which the release of b847059 reads too.
	start := time.Now()
	if _, err := a.Call(ctx, "b", "grow", make([]byte, 4096)); !errors.Is(err, pubsub.ErrCallRejected) {
		t.Fatalf("call answered with 4 MiB, to a caller that announced nothing = %v, want pubsub.ErrCallRejected", err)
	}
	gate := NewGate("b", time.Minute, time.Now())
	gate.Announce("a", BuildReads(), time.Now())
	b.SetGate(gate)
	if _, err := a.Call(ctx, "b", "grow", make([]byte, 4096)); !errors.Is(err, pubsub.ErrTooLarge) {
		t.Fatalf("call answered with 4 MiB = %v, want pubsub.ErrTooLarge", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the too large answers were reported after %s, the caller's deadline", d)
	}
	if got, err := a.Call(ctx, "b", "grow", []byte("ok")); err != nil || len(got) != 2048 {
		t.Fatalf("small call = %d bytes, %v", len(got), err)
	}
	if s := a.Stats(); s.TooLarge != 1 {
		t.Errorf("caller TooLarge = %d, want 1 (its request)", s.TooLarge)
	}
	if s := b.Stats(); s.TooLarge != 2 {
		t.Errorf("callee TooLarge = %d, want 2 (its answers)", s.TooLarge)
	}
}

// Envelopes that decode but carry what no client may receive (a text
// payload that is not valid JSON, or not UTF-8; an event that is not
// UTF-8), or that are above MaxMessageSize, are dropped and counted:
// whoever can PUBLISH on Redis must not reach clients with them.
func TestUndeliverableEnvelopesAreDropped(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b", func(o *Options) { o.MaxMessageSize = MinMaxMessageSize })
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "room:1", r)
	syncAll(t, b)
	rc := inspector(t, srv)
	env := func(event string, bin bool, payload string) string {
		return string(appendEnvelope(nil, "x", time.Now().UnixNano(), 1, "", event, bin, []byte(payload)))
	}
	bad := []string{
		env("e", false, "{\"a\":\"\xff\"}"),                             // valid JSON to json.Valid, but not UTF-8
		env("e", false, `{"a":`),                                        // truncated JSON
		env("e", false, "not json"),                                     // text
		env("e\xc3", false, `{}`),                                       // event not UTF-8
		env("e", false, `"`+strings.Repeat("a", MinMaxMessageSize)+`"`), // above b's bound
	}
	for _, payload := range bad {
		if err := rc.Publish(context.Background(), "test:t:room:1", payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Binary payloads are not JSON, and an empty text payload is {}.
	good := []string{env("bin", true, "\xff\x00"), env("empty", false, "")}
	for _, payload := range good {
		if err := rc.Publish(context.Background(), "test:t:room:1", payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, a, "room:1", "good")
	r.waitCount(t, 3)
	if got := r.events(); !slices.Equal(got, []string{"bin", "empty", "good"}) {
		t.Fatalf("delivered %v, want [bin empty good]", got)
	}
	if s := b.Stats(); s.DecodeErrors != uint64(len(bad)) {
		t.Fatalf("decode errors = %d, want %d", s.DecodeErrors, len(bad))
	}
}
