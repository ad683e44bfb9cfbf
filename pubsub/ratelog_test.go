package pubsub

import (
	"testing"
	"time"
)

func TestRateLogHoldsBackAndCounts(t *testing.T) {
	var l RateLog
	if ok, n := l.Allow(); !ok || n != 0 {
		t.Fatalf("first line: %v, %d held back; want through, 0", ok, n)
	}
	for range 3 {
		if ok, _ := l.Allow(); ok {
			t.Fatal("a second line within LogEvery went through")
		}
	}
	l.mu.Lock()
	l.next = time.Now().Add(-time.Millisecond) // LogEvery has passed
	l.mu.Unlock()
	if ok, n := l.Allow(); !ok || n != 3 {
		t.Fatalf("after LogEvery: %v, %d held back; want through, 3", ok, n)
	}
}
