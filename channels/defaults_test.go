package channels

import (
	"testing"
	"time"
)

// An endpoint's zero-value limits are channelsd's defaults (README
// "Limits"), and a negative value turns a limit off.
func TestEndpointZeroLimitsAreTheDefaults(t *testing.T) {
	e := newTestEnv(t, EndpointConfig{})
	c := e.ep.cfg
	if c.MaxChannels != DefaultMaxChannels || c.MaxPayloadSize != DefaultMaxPayloadSize ||
		c.MaxTopicLength != DefaultMaxTopicLength || c.MaxEventLength != DefaultMaxEventLength ||
		c.MaxRefLength != DefaultMaxRefLength || c.RateAbuseAfter != DefaultRateAbuseAfter {
		t.Fatalf("zero config became %+v", c)
	}
	if want := int64(time.Second / DefaultMaxMessagesPerSecond); e.ep.rlEvery != want {
		t.Fatalf("rate: one message every %d ns, want %d", e.ep.rlEvery, want)
	}
	// Burst: twice the rate. Of 50 messages beyond it, sent at once,
	// some are refused (fewer than 50 if the loop took long enough for
	// the bucket to refill a little), and none of the burst is.
	s, conn := e.open(t, V2)
	for range 2*DefaultMaxMessagesPerSecond + 50 {
		s.handleFrame([]byte(`[null,"1","room:a","ping",{}]`), false)
	}
	if got := e.ep.stats.LimitRate.Load(); got == 0 || got > 50 {
		t.Fatalf("%d messages refused by the rate limit, want 1 to 50", got)
	}
	_ = conn.take()

	off := newTestEnv(t, EndpointConfig{MaxChannels: -1, MaxPayloadSize: -1, MaxTopicLength: -1, MaxEventLength: -1, MaxRefLength: -1, MaxMessagesPerSecond: -1})
	if off.ep.rlEvery != 0 {
		t.Fatal("a negative MaxMessagesPerSecond left the rate limit on")
	}
	big := make([]byte, DefaultMaxPayloadSize+10)
	for i := range big {
		big[i] = 'a'
	}
	s2, _ := off.open(t, V2)
	for range 3 * DefaultMaxMessagesPerSecond {
		s2.handleFrame([]byte(`[null,"1","room:a","ping",{"p":"`+string(big)+`"}]`), false)
	}
	st := &off.ep.stats
	if st.LimitRate.Load() != 0 || st.LimitPayloadSize.Load() != 0 {
		t.Fatalf("limits turned off still refused: rate %d, payload %d", st.LimitRate.Load(), st.LimitPayloadSize.Load())
	}
}
