package pubsub

import (
	"sync"
	"time"
)

// RateLog lets one log line through per LogEvery and counts the rest. A
// broker or tracker that fails the same way thousands of times a second
// (an outage, a Redis full of entries it cannot use) logs a line every
// few seconds, with the number it held back, instead of thousands. The
// zero value is ready to use.
type RateLog struct {
	mu         sync.Mutex
	next       time.Time // guarded by mu
	suppressed int       // guarded by mu
}

// LogEvery is the least time between two lines a RateLog lets through.
const LogEvery = 10 * time.Second

// Allow reports whether a line may be logged now and, when it may, how
// many were held back since the last one.
func (l *RateLog) Allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.suppressed = 0
	l.next = now.Add(LogEvery)
	return true, n
}
